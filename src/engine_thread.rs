//! One thread owns the [`BatchEngine`] (continuous batching) and serves every client: request threads send it
//! prompts over a channel and receive each answer's text as it is generated on a channel of their own.
//!
//! - Admission is bounded: at most `max_batch` sequences decode together and `max_queue` more wait; a request
//!   that does not fit is refused at once ([`Busy`]), so a flood of clients gets fast "busy" answers instead
//!   of an unbounded queue.
//! - A request whose client went away is cancelled: its thread sends [`EngineHandle::cancel`], and a request
//!   whose receiver is gone is dropped at its next token anyway.
//! - The engine thread blocks while idle; while busy it takes new commands between steps, so new prompts join
//!   the running batch at the next step.

use crate::chat_model::ChatModel;
use ferrotune_infer::{BatchEngine, Event, Generation, GenerationConfig, RequestId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

/// What a request's thread receives.
#[derive(Debug)]
pub enum Update {
    /// Text that became final (never empty).
    Text(String),
    /// The sequence ended; nothing follows.
    Done(Generation),
    /// The engine could not run it; nothing follows.
    Failed(String),
}

/// One submitted sequence: its id (for [`EngineHandle::cancel`]) and its updates.
pub struct Ticket {
    pub id: u64,
    pub updates: Receiver<Update>,
}

/// The engine is full: `in_flight` sequences are running or queued, `capacity` at most.
#[derive(Debug)]
pub struct Busy {
    pub in_flight: usize,
    pub capacity: usize,
}

enum Command {
    Submit { ticket: u64, prompt: Vec<u32>, config: GenerationConfig, reply: Sender<Update> },
    Cancel(u64),
}

/// The request threads' side of the engine thread.
pub struct EngineHandle {
    commands: Sender<Command>,
    in_flight: Arc<AtomicUsize>,
    capacity: usize,
    next_ticket: AtomicU64,
}

impl EngineHandle {
    /// Start the engine thread for `chat` with `max_batch` slots and room for `max_queue` waiting sequences.
    pub fn start(chat: Arc<ChatModel>, max_batch: usize, max_queue: usize) -> ferrotune_models::Result<EngineHandle> {
        // Build the engine here so a bad setting is an error now, not a dead thread later.
        BatchEngine::new(&chat.model, Some(&chat.tokenizer), max_batch, chat.context_len)?;
        let (commands, inbox) = channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let counter = in_flight.clone();
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || run(&chat, max_batch, inbox, &counter))
            .map_err(|e| ferrotune_models::Error::msg(format!("cannot start the engine thread: {e}")))?;
        Ok(EngineHandle { commands, in_flight, capacity: max_batch + max_queue, next_ticket: AtomicU64::new(0) })
    }

    /// Queue every job (one per answer) or none of them.
    pub fn submit(&self, jobs: Vec<(Vec<u32>, GenerationConfig)>) -> Result<Vec<Ticket>, Busy> {
        let n = jobs.len();
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| (now + n <= self.capacity).then_some(now + n))
            .map_err(|now| Busy { in_flight: now, capacity: self.capacity })?;
        let mut tickets = Vec::with_capacity(n);
        for (prompt, config) in jobs {
            let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
            let (reply, updates) = channel();
            if self.commands.send(Command::Submit { ticket, prompt, config, reply: reply.clone() }).is_err() {
                // The engine thread is gone (it only ends if it panicked): say so on this ticket.
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = reply.send(Update::Failed("the generation engine stopped; restart the server".into()));
            }
            tickets.push(Ticket { id: ticket, updates });
        }
        Ok(tickets)
    }

    /// Drop a sequence (its client went away); a finished one is ignored.
    pub fn cancel(&self, ticket: u64) {
        let _ = self.commands.send(Command::Cancel(ticket));
    }
}

fn run(chat: &ChatModel, max_batch: usize, inbox: Receiver<Command>, in_flight: &AtomicUsize) {
    let mut engine = match BatchEngine::new(&chat.model, Some(&chat.tokenizer), max_batch, chat.context_len) {
        Ok(e) => e,
        Err(_) => return, // checked in `start`
    };
    let mut routes: HashMap<RequestId, (u64, Sender<Update>)> = HashMap::new();
    let mut by_ticket: HashMap<u64, RequestId> = HashMap::new();
    let release = |routes: &mut HashMap<RequestId, (u64, Sender<Update>)>, by_ticket: &mut HashMap<u64, RequestId>, id: RequestId| {
        if let Some((ticket, reply)) = routes.remove(&id) {
            by_ticket.remove(&ticket);
            in_flight.fetch_sub(1, Ordering::SeqCst);
            Some(reply)
        } else {
            None
        }
    };
    loop {
        let mut commands = Vec::new();
        if engine.is_idle() {
            match inbox.recv() {
                Ok(c) => commands.push(c),
                Err(_) => return, // every handle is gone: the server is shutting down
            }
        }
        commands.extend(inbox.try_iter());
        for command in commands {
            match command {
                Command::Submit { ticket, prompt, config, reply } => match engine.submit(&prompt, config) {
                    Ok(id) => {
                        routes.insert(id, (ticket, reply));
                        by_ticket.insert(ticket, id);
                    }
                    Err(e) => {
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        let _ = reply.send(Update::Failed(e.to_string()));
                    }
                },
                Command::Cancel(ticket) => {
                    if let Some(&id) = by_ticket.get(&ticket) {
                        engine.cancel(id);
                        release(&mut routes, &mut by_ticket, id);
                    }
                }
            }
        }
        if engine.is_idle() {
            continue;
        }
        match engine.step() {
            Ok(events) => {
                for event in events {
                    match event {
                        Event::Token { id, text, .. } => {
                            if text.is_empty() {
                                continue;
                            }
                            let gone = routes.get(&id).is_some_and(|(_, reply)| reply.send(Update::Text(text)).is_err());
                            if gone {
                                engine.cancel(id);
                                release(&mut routes, &mut by_ticket, id);
                            }
                        }
                        Event::Finished { id, generation } => {
                            if let Some(reply) = release(&mut routes, &mut by_ticket, id) {
                                let _ = reply.send(Update::Done(generation));
                            }
                        }
                    }
                }
            }
            Err(e) => {
                // A failed forward leaves no sequence in a known state: end every running and queued one.
                let ids: Vec<RequestId> = routes.keys().copied().collect();
                for id in ids {
                    engine.cancel(id);
                    if let Some(reply) = release(&mut routes, &mut by_ticket, id) {
                        let _ = reply.send(Update::Failed(format!("generation failed: {e}")));
                    }
                }
            }
        }
    }
}
