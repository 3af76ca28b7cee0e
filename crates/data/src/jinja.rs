//! Rendering a tokenizer's jinja `chat_template` as transformers' `apply_chat_template` does: `trim_blocks`,
//! `lstrip_blocks`, loop controls, Python string methods, `raise_exception`, `strftime_now`, and the special
//! tokens (`bos_token`, `eos_token`, ...) as variables.

use crate::{Error, Result};
use ferrotune_models::ModelTokenizer;
use minijinja::{context, Environment, ErrorKind, Value};

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Infallible: no custom delimiters are set.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_function("strftime_now", |_fmt: String| -> String {
        // Training data must not depend on the clock; templates use this for a "today" line only.
        "26 Jul 2024".to_string()
    });
    env
}

/// Render `source` over `(role, content)` messages.
pub fn render_chat(
    tok: &ModelTokenizer,
    source: &str,
    messages: &[(&str, &str)],
    add_generation_prompt: bool,
) -> Result<String> {
    let env = environment();
    let tmpl = env
        .template_from_str(source)
        .map_err(|e| Error::msg(format!("cannot parse the tokenizer's chat_template: {e}")))?;
    let msgs: Vec<Value> = messages
        .iter()
        .map(|(r, c)| context! { role => *r, content => *c })
        .collect();
    tmpl.render(context! {
        messages => msgs,
        add_generation_prompt => add_generation_prompt,
        bos_token => tok.bos_token.clone().unwrap_or_default(),
        eos_token => tok.eos_token.clone().unwrap_or_default(),
        pad_token => tok.pad_token.clone().unwrap_or_default(),
        unk_token => tok.unk_token.clone().unwrap_or_default(),
    })
    .map_err(|e| Error::msg(format!("cannot render the tokenizer's chat_template: {e}")))
}
