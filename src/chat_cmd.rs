//! `ferrotune chat cfg.yaml [key=value ...]`: `llamafactory-cli chat` in the terminal. Each line read from
//! standard input is the user's turn; the answer streams to standard output as it is generated. `clear` forgets
//! the history, `exit` (or the end of input) quits. Works the same with a pipe instead of a terminal, so scripts
//! can drive it; the model summary and the memory figures go to standard error.

use crate::chat_model::{ChatModel, Overrides};
use crate::model_cmd::peak_rss_bytes;
use ferrotune_data::{Message, Role};
use ferrotune_infer::Generator;
use std::io::{BufRead, Write};
use std::time::Instant;

pub fn run(args: &[String]) -> Result<(), String> {
    let parsed = ferrotune_args::parse_infer_args(args).map_err(|e| e.to_string())?;
    for note in &parsed.notes {
        eprintln!("note: {note}");
    }
    let start = Instant::now();
    let chat = ChatModel::from_infer_args(&parsed).map_err(|e| e.to_string())?;
    eprintln!("loaded {} in {:.1} s", chat.summary(), start.elapsed().as_secs_f64());
    let mut cache = chat.new_cache().map_err(|e| e.to_string())?;
    let generator = Generator::new(&chat.model, Some(&chat.tokenizer));

    println!("Welcome to the CLI application, use `clear` to remove the history, use `exit` to exit the application.");
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout();
    let mut messages: Vec<Message> = Vec::new();
    let mut line = Vec::new();
    // The most positions any turn filled: the KV cache's resident share (its pages are committed as they fill).
    let mut most_positions = 0;
    loop {
        print!("\nUser: ");
        out.flush().map_err(|e| e.to_string())?;
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(|e| format!("cannot read standard input: {e}"))? == 0 {
            println!();
            break;
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            println!("Detected decoding error at the inputs, please set the terminal encoding to utf-8.");
            continue;
        };
        let query = text.trim_end_matches(['\n', '\r']);
        match query.trim() {
            "exit" => break,
            "clear" => {
                messages.clear();
                println!("History has been removed.");
                continue;
            }
            _ => {}
        }
        messages.push(Message::new(Role::User, query));
        print!("Assistant: ");
        out.flush().map_err(|e| e.to_string())?;
        let turn = chat.encode_prompt(&messages, None).and_then(|prompt| {
            let config = chat.generation_config(prompt.len(), &Overrides::default())?;
            let mut write_error = None;
            let result = generator.generate(&mut cache, &prompt, &config, &mut |piece| {
                if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                    write_error.get_or_insert(e);
                }
            });
            if let Some(e) = write_error {
                return Err(ferrotune_models::Error::msg(format!("cannot write the answer: {e}")));
            }
            result
        });
        match turn {
            Ok((generation, _)) => {
                most_positions = most_positions.max(cache.len());
                println!();
                messages.push(Message::new(Role::Assistant, generation.text));
            }
            Err(e) => {
                // The turn is dropped, so the history stays a valid user/assistant alternation.
                messages.pop();
                println!();
                eprintln!("error: {e}");
            }
        }
    }
    if let Some(peak) = peak_rss_bytes() {
        eprintln!(
            "peak memory (RSS): {:.0} MB (weights {:.0} MB, KV cache filled {:.1} MB for {most_positions} positions)",
            peak as f64 / 1e6,
            chat.model.nbytes() as f64 / 1e6,
            most_positions as f64 * cache.nbytes() as f64 / cache.capacity().max(1) as f64 / 1e6
        );
    }
    Ok(())
}
