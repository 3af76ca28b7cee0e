//! Chat templates as data (LLaMA-Factory `data/template.py`): each registered template is a set of slot
//! lists; encoding turns messages into `(source, target)` token-id pairs exactly as `Template._encode` does
//! (every string slot tokenized on its own, without special tokens).

use crate::convert::{Message, Role};
use crate::tools::{self, ToolFormat};
use crate::{bail, Context, Result};
use ferrotune_models::ModelTokenizer;

/// One slot: literal text (may hold `{{content}}` / `{{idx}}`), the tokenizer's bos / eos id, or a token by name.
#[derive(Debug, Clone, PartialEq)]
pub enum Slot {
    Text(String),
    Bos,
    Eos,
    Token(String),
}

fn t(s: &str) -> Slot {
    Slot::Text(s.to_string())
}

/// Python's `str.replace(old, new, 1)`.
fn replace_once(s: &str, old: &str, new: &str) -> String {
    match s.find(old) {
        Some(i) => format!("{}{new}{}", &s[..i], &s[i + old.len()..]),
        None => s.to_string(),
    }
}

/// `StringFormatter.apply(content=..., idx=...)`.
fn apply(slots: &[Slot], content: &str, idx: Option<&str>) -> Vec<Slot> {
    slots
        .iter()
        .map(|s| match s {
            Slot::Text(text) => {
                let mut out = replace_once(text, "{{content}}", content);
                if let Some(i) = idx {
                    out = replace_once(&out, "{{idx}}", i);
                }
                Slot::Text(out)
            }
            other => other.clone(),
        })
        .collect()
}

/// The order `list(s)` gives for a CPython 3.x `set` of small non-negative ints built by adding `ids` in turn:
/// an int hashes to itself, the table starts with 8 slots, a taken slot is probed past by up to 9 linear steps
/// (where they fit in the table) and then `i = (i * 5 + 1 + perturb) & mask` after `perturb >>= 5`, and the
/// table grows past 4x the entries once 3/5 full (setobject.c). Iteration walks the slots.
fn python_set_order(ids: impl IntoIterator<Item = u32>) -> Vec<u32> {
    fn insert(table: &mut [Option<u32>], id: u32) {
        let mask = table.len() - 1;
        let (mut i, mut perturb) = (id as usize & mask, id as usize);
        loop {
            let linear_probes = if i + 9 <= mask { 9 } else { 0 };
            if let Some(free) = (i..=i + linear_probes).find(|&j| table[j].is_none()) {
                table[free] = Some(id);
                return;
            }
            perturb >>= 5;
            i = (i * 5 + 1 + perturb) & mask;
        }
    }
    let mut table: Vec<Option<u32>> = vec![None; 8];
    let mut used = 0usize;
    for id in ids {
        if table.contains(&Some(id)) {
            continue;
        }
        insert(&mut table, id);
        used += 1;
        if used * 5 >= (table.len() - 1) * 3 {
            let mut size = 8;
            while size <= used * 4 {
                size *= 2;
            }
            let old = std::mem::replace(&mut table, vec![None; size]);
            for id in old.into_iter().flatten() {
                insert(&mut table, id);
            }
        }
    }
    table.into_iter().flatten().collect()
}

/// How a template class encodes (LLaMA-Factory's `Template` subclasses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateClass {
    Plain,
    /// `Llama2Template`: the system text goes into the first user message.
    Llama2,
    /// `ReasoningTemplate`: an empty thought is added to assistant turns without one.
    Reasoning,
}

/// A chat template. Built from the registry ([`Template::builtin`]) or parsed from a tokenizer's jinja
/// chat template ([`Template::from_chat_template`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    pub format_user: Vec<Slot>,
    pub format_assistant: Vec<Slot>,
    pub format_system: Vec<Slot>,
    /// Function-call turns: these slots around the call rendered in `function_tool_format`.
    pub format_function: Vec<Slot>,
    pub function_tool_format: ToolFormat,
    pub format_observation: Vec<Slot>,
    pub tool_format: ToolFormat,
    pub format_prefix: Vec<Slot>,
    pub default_system: String,
    pub stop_words: Vec<String>,
    pub thought_words: (String, String),
    pub tool_call_words: (String, String),
    pub efficient_eos: bool,
    pub replace_eos: bool,
    pub replace_jinja_template: bool,
    pub enable_thinking: Option<bool>,
    pub preserve_thinking: bool,
    pub class: TemplateClass,
}

/// `register_template`'s keyword arguments; unset ones take its defaults.
#[derive(Default)]
struct Reg {
    user: Option<Vec<Slot>>,
    assistant: Option<Vec<Slot>>,
    system: Option<Vec<Slot>>,
    function: Option<(Vec<Slot>, ToolFormat)>,
    observation: Option<Vec<Slot>>,
    tools: Option<ToolFormat>,
    prefix: Option<Vec<Slot>>,
    default_system: &'static str,
    stop_words: &'static [&'static str],
    efficient_eos: bool,
    replace_eos: bool,
    replace_jinja_template: bool,
    class: Option<TemplateClass>,
}

impl Reg {
    fn build(self, name: &str) -> Template {
        let default_slots = if self.efficient_eos {
            vec![t("{{content}}")]
        } else {
            vec![t("{{content}}"), Slot::Eos]
        };
        let user_default = vec![t("{{content}}")];
        let function = match self.function {
            Some(f) => f,
            None => (
                self.assistant
                    .clone()
                    .unwrap_or_else(|| default_slots.clone()),
                ToolFormat::Default,
            ),
        };
        Template {
            name: name.to_string(),
            format_observation: self
                .observation
                .or_else(|| self.user.clone())
                .unwrap_or_else(|| user_default.clone()),
            format_user: self.user.unwrap_or_else(|| user_default.clone()),
            format_assistant: self.assistant.unwrap_or(default_slots),
            format_system: self.system.unwrap_or(user_default),
            format_function: function.0,
            function_tool_format: function.1,
            tool_format: self.tools.unwrap_or(ToolFormat::Default),
            format_prefix: self.prefix.unwrap_or_default(),
            default_system: self.default_system.to_string(),
            stop_words: self.stop_words.iter().map(|s| s.to_string()).collect(),
            thought_words: ("<think>\n".into(), "\n</think>\n\n".into()),
            tool_call_words: ("<tool_call>".into(), "</tool_call>".into()),
            efficient_eos: self.efficient_eos,
            replace_eos: self.replace_eos,
            replace_jinja_template: self.replace_jinja_template,
            enable_thinking: Some(true),
            preserve_thinking: false,
            class: self.class.unwrap_or(TemplateClass::Plain),
        }
    }
}

const IM_USER: &str = "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n";
const IM_ASSISTANT: &str = "{{content}}<|im_end|>\n";
const IM_SYSTEM: &str = "<|im_start|>system\n{{content}}<|im_end|>\n";
const IM_TOOL: &str = "<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n";
const QWEN_OBSERVATION: &str =
    "<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n";

/// The template names [`Template::builtin`] knows (LLaMA-Factory 0.9.5 registrations, text-only ones).
pub const TEMPLATE_NAMES: &[&str] = &[
    "alpaca",
    "breeze",
    "chatml",
    "chatml_de",
    "cohere",
    "cpm4",
    "deepseek",
    "default",
    "empty",
    "falcon",
    "gemma",
    "gemma2",
    "intern2",
    "llama2",
    "llama2_zh",
    "llama3",
    "mistral",
    "olmo",
    "openchat",
    "opencoder",
    "phi",
    "phi4",
    "qwen",
    "qwen3",
    "qwen3_nothink",
    "smollm",
    "smollm2",
    "solar",
    "starchat",
    "vicuna",
    "xuanyuan",
    "yi",
    "zephyr",
];

impl Template {
    /// The registered template `name`, as LLaMA-Factory 0.9.5 registers it.
    pub fn builtin(name: &str) -> Result<Template> {
        let v = |s: &[Slot]| Some(s.to_vec());
        let qwen_like = |default_system: &'static str, class: TemplateClass| Reg {
            user: v(&[t(IM_USER)]),
            assistant: v(&[t(IM_ASSISTANT)]),
            system: v(&[t(IM_SYSTEM)]),
            function: Some((vec![t(IM_ASSISTANT)], ToolFormat::Qwen)),
            observation: v(&[t(QWEN_OBSERVATION)]),
            tools: Some(ToolFormat::Qwen),
            default_system,
            stop_words: &["<|im_end|>"],
            replace_eos: true,
            class: Some(class),
            ..Reg::default()
        };
        let im = |default_system: &'static str, stop: &'static [&'static str]| Reg {
            user: v(&[t(IM_USER)]),
            assistant: v(&[t(IM_ASSISTANT)]),
            system: v(&[t(IM_SYSTEM)]),
            default_system,
            stop_words: stop,
            ..Reg::default()
        };
        let reg = match name {
            "alpaca" => Reg {
                user: v(&[t("### Instruction:\n{{content}}\n\n### Response:\n")]),
                assistant: v(&[t("{{content}}"), Slot::Eos, t("\n\n")]),
                default_system: "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n",
                replace_jinja_template: true,
                ..Reg::default()
            },
            "breeze" => Reg {
                user: v(&[t("[INST] {{content}} [/INST] ")]),
                prefix: v(&[Slot::Bos]),
                efficient_eos: true,
                ..Reg::default()
            },
            "chatml" | "chatml_de" => Reg {
                observation: v(&[t(IM_TOOL)]),
                stop_words: &["<|im_end|>", "<|im_start|>"],
                replace_eos: true,
                replace_jinja_template: true,
                ..im(if name == "chatml_de" { "Du bist ein freundlicher und hilfsbereiter KI-Assistent." } else { "" }, &[])
            },
            "cohere" => Reg {
                user: v(&[t("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>")]),
                system: v(&[t("<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>")]),
                prefix: v(&[Slot::Bos]),
                ..Reg::default()
            },
            "cpm4" => Reg { observation: v(&[t(IM_TOOL)]), prefix: v(&[Slot::Bos]), ..im("", &["<|im_end|>"]) },
            "deepseek" => Reg {
                user: v(&[t("User: {{content}}\n\nAssistant:")]),
                system: v(&[t("{{content}}\n\n")]),
                prefix: v(&[Slot::Bos]),
                ..Reg::default()
            },
            "default" => Reg {
                user: v(&[t("Human: {{content}}"), Slot::Eos, t("\nAssistant:")]),
                assistant: v(&[t("{{content}}"), Slot::Eos, t("\n")]),
                system: v(&[t("System: {{content}}"), Slot::Eos, t("\n")]),
                replace_jinja_template: true,
                ..Reg::default()
            },
            "empty" => Reg { assistant: v(&[t("{{content}}")]), ..Reg::default() },
            "falcon" => Reg {
                user: v(&[t("User: {{content}}\nFalcon:")]),
                assistant: v(&[t("{{content}}\n")]),
                efficient_eos: true,
                ..Reg::default()
            },
            "gemma" | "gemma2" => Reg {
                user: v(&[t("<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n")]),
                assistant: v(&[t("{{content}}<end_of_turn>\n")]),
                system: v(&[t("{{content}}\n\n")]),
                observation: v(&[t("<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n")]),
                prefix: v(&[Slot::Bos]),
                stop_words: if name == "gemma" { &["<end_of_turn>"] } else { &["<eos>", "<end_of_turn>"] },
                replace_eos: name == "gemma",
                efficient_eos: name == "gemma2",
                class: Some(TemplateClass::Llama2),
                ..Reg::default()
            },
            "intern2" => Reg {
                prefix: v(&[Slot::Bos]),
                ..im(
                    "You are an AI assistant whose name is InternLM (书生·浦语).\n- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by the user such as English and 中文.",
                    &["<|im_end|>"],
                )
            },
            "llama2" | "llama2_zh" => Reg {
                user: v(&[Slot::Bos, t("[INST] {{content}} [/INST]")]),
                system: v(&[t("<<SYS>>\n{{content}}\n<</SYS>>\n\n")]),
                default_system: if name == "llama2_zh" { "You are a helpful assistant. 你是一个乐于助人的助手。" } else { "" },
                class: Some(TemplateClass::Llama2),
                ..Reg::default()
            },
            "llama3" => Reg {
                user: v(&[t("<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")]),
                assistant: v(&[t("{{content}}<|eot_id|>")]),
                system: v(&[t("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>")]),
                observation: v(&[t("<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")]),
                prefix: v(&[Slot::Bos]),
                stop_words: &["<|eot_id|>", "<|eom_id|>"],
                replace_eos: true,
                ..Reg::default()
            },
            "mistral" => Reg {
                user: v(&[t("[INST] {{content}}[/INST]")]),
                assistant: v(&[t(" {{content}}"), Slot::Eos]),
                system: v(&[t("{{content}}\n\n")]),
                observation: v(&[t("[TOOL_RESULTS] {\"content\": {{content}}}[/TOOL_RESULTS]")]),
                prefix: v(&[Slot::Bos]),
                class: Some(TemplateClass::Llama2),
                ..Reg::default()
            },
            "olmo" => Reg { user: v(&[t("<|user|>\n{{content}}<|assistant|>\n")]), prefix: v(&[Slot::Eos]), ..Reg::default() },
            "openchat" => Reg {
                user: v(&[t("GPT4 Correct User: {{content}}"), Slot::Eos, t("GPT4 Correct Assistant:")]),
                prefix: v(&[Slot::Bos]),
                ..Reg::default()
            },
            "opencoder" => Reg { observation: v(&[t(IM_TOOL)]), ..im("You are OpenCoder, created by OpenCoder Team.", &["<|im_end|>"]) },
            "phi" => Reg {
                user: v(&[t("<|user|>\n{{content}}<|end|>\n<|assistant|>\n")]),
                assistant: v(&[t("{{content}}<|end|>\n")]),
                system: v(&[t("<|system|>\n{{content}}<|end|>\n")]),
                stop_words: &["<|end|>"],
                replace_eos: true,
                ..Reg::default()
            },
            "phi4" => Reg {
                user: v(&[t("<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>")]),
                assistant: v(&[t("{{content}}<|im_end|>")]),
                system: v(&[t("<|im_start|>system<|im_sep|>{{content}}<|im_end|>")]),
                stop_words: &["<|im_end|>"],
                replace_eos: true,
                ..Reg::default()
            },
            "qwen" => qwen_like("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", TemplateClass::Plain),
            "qwen3" => qwen_like("", TemplateClass::Reasoning),
            "qwen3_nothink" => qwen_like("", TemplateClass::Plain),
            "smollm" | "yi" => im("", &["<|im_end|>"]),
            "smollm2" => im("You are a helpful AI assistant named SmolLM, trained by Hugging Face.", &["<|im_end|>"]),
            "solar" => Reg {
                user: v(&[t("### User:\n{{content}}\n\n### Assistant:\n")]),
                system: v(&[t("### System:\n{{content}}\n\n")]),
                efficient_eos: true,
                ..Reg::default()
            },
            "starchat" => Reg {
                user: v(&[t("<|user|>\n{{content}}<|end|>\n<|assistant|>")]),
                assistant: v(&[t("{{content}}<|end|>\n")]),
                system: v(&[t("<|system|>\n{{content}}<|end|>\n")]),
                stop_words: &["<|end|>"],
                ..Reg::default()
            },
            "vicuna" => Reg {
                user: v(&[t("USER: {{content}} ASSISTANT:")]),
                default_system: "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.",
                replace_jinja_template: true,
                ..Reg::default()
            },
            "xuanyuan" => Reg {
                user: v(&[t("Human: {{content}} Assistant:")]),
                default_system: "以下是用户和人工智能助手之间的对话。用户以Human开头，人工智能助手以Assistant开头，会对人类提出的问题给出有帮助、高质量、详细和礼貌的回答，并且总是拒绝参与与不道德、不安全、有争议、政治敏感等相关的话题、问题和指示。\n",
                ..Reg::default()
            },
            "zephyr" => Reg {
                user: v(&[t("<|user|>\n{{content}}"), Slot::Eos, t("<|assistant|>\n")]),
                system: v(&[t("<|system|>\n{{content}}"), Slot::Eos]),
                default_system: "You are Zephyr, a helpful assistant.",
                ..Reg::default()
            },
            other => bail!("Template {other} does not exist (known here: {})", TEMPLATE_NAMES.join(", ")),
        };
        Ok(reg.build(name))
    }

    /// `Template._convert_elements_to_ids`.
    fn to_ids(&self, tok: &ModelTokenizer, elements: &[Slot]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for e in elements {
            match e {
                Slot::Text(s) if s.is_empty() => {}
                Slot::Text(s) => ids.extend(tok.encode(s, false)?),
                Slot::Token(name) => match tok
                    .token_to_id(name)
                    .or_else(|| tok.unk_token.as_deref().and_then(|u| tok.token_to_id(u)))
                {
                    Some(id) => ids.push(id),
                    None => bail!(
                        "template {}: token {name:?} is not in the vocabulary",
                        self.name
                    ),
                },
                Slot::Bos => ids.extend(tok.bos_token_id()),
                Slot::Eos => ids.extend(tok.eos_token_id()),
            }
        }
        Ok(ids)
    }

    fn system_elements(&self, system: &str, tools: &str) -> Result<Vec<Slot>> {
        let tool_text = if tools.is_empty() {
            String::new()
        } else {
            tools::format_tools(self.tool_format, tools)?
        };
        Ok(apply(
            &self.format_system,
            &format!("{system}{tool_text}"),
            None,
        ))
    }

    /// `Template._encode`: one id list per message.
    pub fn encode_messages(
        &self,
        tok: &ModelTokenizer,
        messages: &[Message],
        system: &str,
        tools: &str,
    ) -> Result<Vec<Vec<u32>>> {
        let system = if system.is_empty() {
            self.default_system.as_str()
        } else {
            system
        };
        let mut out = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let mut elements = Vec::new();
            let mut system_text = String::new();
            if i == 0 {
                elements.extend(self.format_prefix.iter().cloned());
                if !system.is_empty() || !tools.is_empty() {
                    let sys = self.system_elements(system, tools)?;
                    if self.class == TemplateClass::Llama2 {
                        // Llama2Template keeps only the first slot of the system formatter, as text.
                        if let Some(Slot::Text(s)) = sys.first() {
                            system_text = s.clone();
                        }
                    } else {
                        elements.extend(sys);
                    }
                }
            }
            let content = &m.content;
            match m.role {
                Role::User => {
                    let idx = (i / 2).to_string();
                    if self.class == TemplateClass::Llama2 {
                        elements.extend(apply(&self.format_user, &format!("{system_text}{content}"), None));
                    } else {
                        elements.extend(apply(&self.format_user, content, Some(&idx)));
                    }
                }
                Role::Assistant => elements.extend(apply(&self.format_assistant, content, None)),
                Role::Observation => elements.extend(apply(&self.format_observation, content, None)),
                Role::Function => {
                    let (thought, calls) = if self.class == TemplateClass::Llama2 {
                        (None, None)
                    } else {
                        (
                            Some((self.thought_words.0.as_str(), self.thought_words.1.as_str())),
                            Some((self.tool_call_words.0.as_str(), self.tool_call_words.1.as_str())),
                        )
                    };
                    let text = tools::format_function(self.function_tool_format, content, thought, calls)
                        .with_context(|| format!("message {i}"))?;
                    elements.extend(apply(&self.format_function, &text, None));
                }
                Role::System => bail!("Unexpected role: system (message {i}); system text belongs in the system field"),
            }
            out.push(self.to_ids(tok, &elements)?);
        }
        Ok(out)
    }

    /// `remove_thought`: drop every `<think>...</think>` block, then leading newlines.
    pub fn remove_thought(&self, content: &str) -> String {
        let (open, close) = (&self.thought_words.0, &self.thought_words.1);
        let mut out = String::new();
        let mut rest = content;
        while let Some((s, e, _)) = tools::find_between(rest, open, close) {
            out.push_str(&rest[..s]);
            rest = &rest[e..];
        }
        out.push_str(rest);
        out.trim_start_matches('\n').to_string()
    }

    /// `encode_multiturn`: `(source, target)` id pairs, one per turn.
    pub fn encode_multiturn(
        &self,
        tok: &ModelTokenizer,
        messages: &[Message],
        system: &str,
        tools: &str,
        discarding_history_cot: bool,
    ) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
        if self.class != TemplateClass::Reasoning {
            let enc = self.encode_messages(tok, messages, system, tools)?;
            return Ok(pairs(enc));
        }
        let mut messages = messages.to_vec();
        if self.enable_thinking == Some(false) {
            for i in (1..messages.len()).step_by(2) {
                messages[i].content = self.remove_thought(&messages[i].content);
            }
        }
        if discarding_history_cot {
            for i in (1..messages.len().saturating_sub(2)).step_by(2) {
                messages[i].content = self.remove_thought(&messages[i].content);
            }
        }
        let mut enc = self.encode_messages(tok, &messages, system, tools)?;
        let turns: Vec<usize> = if discarding_history_cot {
            vec![messages.len().saturating_sub(2)]
        } else {
            (0..messages.len()).step_by(2).collect()
        };
        let thought_ids = tok.encode(
            &format!("{}{}", self.thought_words.0, self.thought_words.1),
            false,
        )?;
        let (open, close) = (self.thought_words.0.trim(), self.thought_words.1.trim());
        for i in turns {
            let Some(answer) = messages.get(i + 1) else {
                continue;
            };
            if !answer.content.contains(open) && !answer.content.contains(close) {
                if self.enable_thinking != Some(true) {
                    enc[i].extend_from_slice(&thought_ids);
                } else {
                    enc[i + 1] = [thought_ids.clone(), std::mem::take(&mut enc[i + 1])].concat();
                }
            }
        }
        Ok(pairs(enc))
    }

    /// `encode_oneturn`: every message but the last as the prompt, the last as the response (reasoning
    /// templates drop history thoughts unless `preserve_thinking`, and add an empty thought as
    /// `encode_multiturn` does).
    pub fn encode_oneturn(
        &self,
        tok: &ModelTokenizer,
        messages: &[Message],
        system: &str,
        tools: &str,
    ) -> Result<(Vec<u32>, Vec<u32>)> {
        let mut messages = messages.to_vec();
        let reasoning = self.class == TemplateClass::Reasoning;
        if reasoning {
            if !self.preserve_thinking {
                for i in (1..messages.len().saturating_sub(2)).step_by(2) {
                    messages[i].content = self.remove_thought(&messages[i].content);
                }
            }
            if self.enable_thinking == Some(false) {
                if let Some(last) = messages.last_mut() {
                    last.content = self.remove_thought(&last.content);
                }
            }
        }
        let mut enc = self.encode_messages(tok, &messages, system, tools)?;
        let mut response = enc.pop().unwrap_or_default();
        let mut prompt: Vec<u32> = enc.into_iter().flatten().collect();
        if reasoning {
            let last = messages.last().map_or("", |m| m.content.as_str());
            if !last.contains(self.thought_words.0.trim())
                && !last.contains(self.thought_words.1.trim())
            {
                let thought_ids = tok.encode(
                    &format!("{}{}", self.thought_words.0, self.thought_words.1),
                    false,
                )?;
                if self.enable_thinking != Some(true) {
                    prompt.extend(thought_ids);
                } else {
                    response = [thought_ids, response].concat();
                }
            }
        }
        Ok((prompt, response))
    }

    /// `get_template_and_fix_tokenizer`'s tokenizer half (`fix_special_tokens`): with `replace_eos` the first
    /// stop word becomes eos, a missing eos becomes `<|endoftext|>`, a missing pad becomes eos, the other stop
    /// words become special tokens. New tokens get ids past the vocabulary, as transformers gives them.
    pub fn fix_tokenizer(&self, tok: &mut ModelTokenizer) -> Result<()> {
        let mut stop_words: &[String] = &self.stop_words;
        let add = |tok: &mut ModelTokenizer, t: &str| {
            tok.tokenizer
                .add_special_tokens(&[tokenizers::AddedToken::from(t.to_string(), true)]);
        };
        if self.replace_eos {
            let Some(first) = stop_words.first() else {
                bail!(
                    "template {}: stop words are required to replace the EOS token",
                    self.name
                )
            };
            if tok.eos_token.as_deref() != Some(first) {
                add(tok, first);
                tok.eos_token = Some(first.clone());
            }
            stop_words = &stop_words[1..];
        }
        if tok.eos_token_id().is_none() {
            add(tok, "<|endoftext|>");
            tok.eos_token = Some("<|endoftext|>".into());
        }
        if tok.pad_token_id().is_none() {
            tok.pad_token = tok.eos_token.clone();
        }
        for w in stop_words {
            add(tok, w);
        }
        Ok(())
    }

    /// `Template.get_stop_token_ids`: the tokenizer's eos plus every stop word that is a token (each one is a
    /// special token once [`Template::fix_tokenizer`] ran), without repeats, in the order upstream's Python set
    /// lists them (which the Ollama Modelfile's `PARAMETER stop` lines follow).
    pub fn stop_token_ids(&self, tok: &ModelTokenizer) -> Vec<u32> {
        let ids = tok.eos_token_id().into_iter().chain(self.stop_words.iter().filter_map(|w| tok.token_to_id(w)));
        python_set_order(ids)
    }

    /// `Template.get_ollama_modelfile`: the Ollama `Modelfile` LLaMA-Factory's export writes next to the model
    /// (`FROM .`, a Go TEMPLATE built from the prefix / system / user / assistant slots, SYSTEM when the
    /// template has a default system prompt, one `PARAMETER stop` per stop token, `num_ctx 4096`).
    pub fn ollama_modelfile(&self, tok: &ModelTokenizer) -> Result<String> {
        // `_convert_slots_to_ollama`: `{{content}}` becomes the Go placeholder, bos / eos their token text.
        let slots_to_go = |slots: &[Slot], placeholder: &str| -> Result<String> {
            let mut out = String::new();
            for slot in slots {
                match slot {
                    Slot::Text(text) => match text.split_once("{{content}}") {
                        Some((before, after)) => {
                            out.push_str(before);
                            out.push_str(&format!("{{{{ {placeholder} }}}}"));
                            out.push_str(after);
                        }
                        None => out.push_str(text),
                    },
                    Slot::Bos => {
                        if let (Some(_), Some(text)) = (tok.bos_token_id(), &tok.bos_token) {
                            out.push_str(text);
                        }
                    }
                    Slot::Eos => {
                        if let (Some(_), Some(text)) = (tok.eos_token_id(), &tok.eos_token) {
                            out.push_str(text);
                        }
                    }
                    Slot::Token(name) => bail!(
                        "template {}: the slot {{\"token\": {name:?}}} cannot be written as an Ollama template (LLaMA-Factory: \"Dict is not supported.\")",
                        self.name
                    ),
                }
            }
            Ok(out)
        };
        let prefix = slots_to_go(&self.format_prefix, "content")?;
        let system = slots_to_go(&self.format_system, ".System")?;
        let user = slots_to_go(&self.format_user, ".Content")?;
        let assistant = slots_to_go(&self.format_assistant, ".Content")?;
        let mut file = String::from("# ollama modelfile auto-generated by llamafactory\n\n");
        file.push_str(&format!(
            "FROM .\n\nTEMPLATE \"\"\"{prefix}{{{{ if .System }}}}{system}{{{{ end }}}}{{{{ range .Messages }}}}{{{{ if eq .Role \"user\" }}}}{user}{{{{ else if eq .Role \"assistant\" }}}}{assistant}{{{{ end }}}}{{{{ end }}}}\"\"\"\n\n"
        ));
        if !self.default_system.is_empty() {
            file.push_str(&format!("SYSTEM \"\"\"{}\"\"\"\n\n", self.default_system));
        }
        for id in self.stop_token_ids(tok) {
            let token = tok.id_to_token(id).unwrap_or_default();
            file.push_str(&format!("PARAMETER stop \"{token}\"\n"));
        }
        file.push_str("PARAMETER num_ctx 4096\n");
        Ok(file)
    }

    /// A template parsed from the tokenizer's jinja `chat_template` (LLaMA-Factory `parse_template`).
    pub fn from_chat_template(tok: &ModelTokenizer) -> Result<Template> {
        let Some(source) = &tok.chat_template else {
            bail!(
                "the tokenizer has no chat_template; set `template` to one of {}",
                TEMPLATE_NAMES.join(", ")
            )
        };
        let render = |msgs: &[(&str, &str)], gen: bool| -> Result<String> {
            crate::jinja::render_chat(tok, source, msgs, gen)
        };
        let prefix = tok.decode(&tok.encode("", true)?, false)?;
        let cut = |s: String, n: usize| -> String { s.chars().skip(n).collect() };
        let plen = prefix.chars().count();
        let system_slot = cut(render(&[("system", "{{content}}")], false)?, plen);
        let user_slot_empty_system = cut(
            render(&[("system", ""), ("user", "{{content}}")], true)?,
            plen,
        );
        let mut user_slot = cut(render(&[("user", "{{content}}")], true)?, plen);
        let assistant_full = render(
            &[("user", "{{content}}"), ("assistant", "{{content}}")],
            false,
        )?;
        let mut assistant_slot = cut(assistant_full, plen + user_slot.chars().count());
        let class = if assistant_slot.contains("<think>") {
            TemplateClass::Reasoning
        } else {
            TemplateClass::Plain
        };
        assistant_slot = assistant_slot
            .replace("<think>", "")
            .replace("</think>", "")
            .trim_start_matches('\n')
            .to_string();
        let mut default_system = String::new();
        if user_slot.chars().count() > user_slot_empty_system.chars().count() {
            default_system = find_diff(&user_slot_empty_system, &user_slot);
            let sole_system = replace_once(&system_slot, "{{content}}", &default_system);
            user_slot = cut(user_slot, sole_system.chars().count());
        }
        for (what, slot) in [
            ("user", &user_slot),
            ("assistant", &assistant_slot),
            ("system", &system_slot),
        ] {
            if !slot.contains("{{content}}") {
                bail!("cannot parse the tokenizer's chat_template: its {what} turn has no content placeholder; set `template`");
            }
        }
        Ok(Template {
            name: "<chat_template>".into(),
            format_user: vec![Slot::Text(user_slot.clone())],
            format_assistant: vec![Slot::Text(assistant_slot.clone())],
            format_system: vec![Slot::Text(system_slot)],
            format_function: vec![Slot::Text(assistant_slot)],
            function_tool_format: ToolFormat::Default,
            format_observation: vec![Slot::Text(user_slot)],
            tool_format: ToolFormat::Default,
            format_prefix: if prefix.is_empty() {
                Vec::new()
            } else {
                vec![Slot::Text(prefix)]
            },
            default_system,
            stop_words: Vec::new(),
            thought_words: ("<think>\n".into(), "\n</think>\n\n".into()),
            tool_call_words: ("<tool_call>".into(), "</tool_call>".into()),
            efficient_eos: false,
            replace_eos: false,
            replace_jinja_template: false,
            enable_thinking: Some(true),
            preserve_thinking: false,
            class,
        })
    }
}

fn pairs(enc: Vec<Vec<u32>>) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut it = enc.into_iter();
    let mut out = Vec::new();
    while let Some(src) = it.next() {
        out.push((src, it.next().unwrap_or_default()));
    }
    out
}

/// `parse_template.find_diff`: the characters of `long` skipped while matching `short` in order.
fn find_diff(short: &str, long: &str) -> String {
    let s: Vec<char> = short.chars().collect();
    let l: Vec<char> = long.chars().collect();
    let (mut i, mut j) = (0, 0);
    let mut diff = String::new();
    while i < s.len() && j < l.len() {
        if s[i] == l[j] {
            i += 1;
        } else {
            diff.push(l[j]);
        }
        j += 1;
    }
    diff
}

/// The template for `options` (`get_template_and_fix_tokenizer`): the named one, else the tokenizer's jinja
/// chat template, else `empty`; with the options' overrides applied and the tokenizer fixed.
pub fn get_template_and_fix_tokenizer(
    tok: &mut ModelTokenizer,
    options: &crate::DataOptions,
) -> Result<Template> {
    let mut template = match &options.template {
        Some(name) => Template::builtin(name)?,
        None if tok.chat_template.is_some() => Template::from_chat_template(tok)?,
        None => Template::builtin("empty")?,
    };
    if options.train_on_prompt && template.efficient_eos {
        bail!("Current template does not support `train_on_prompt`.");
    }
    if let Some(fmt) = &options.tool_format {
        let f = ToolFormat::parse(fmt)?;
        template.format_function = if template.efficient_eos {
            vec![t("{{content}}")]
        } else {
            vec![t("{{content}}"), Slot::Eos]
        };
        template.function_tool_format = f;
        template.tool_format = f;
    }
    if let Some(system) = &options.default_system {
        template.default_system = system.clone();
    }
    if template.class == TemplateClass::Reasoning {
        template.enable_thinking = options.enable_thinking;
        template.preserve_thinking = options.preserve_thinking;
    }
    template.fix_tokenizer(tok)?;
    Ok(template)
}

#[cfg(test)]
mod python_set_order_tests {
    use super::python_set_order;

    /// Expected orders printed by CPython 3.11: `s = set(); [s.add(x) for x in ids]; list(s)`.
    #[test]
    fn matches_cpython_set_iteration() {
        let cases: [(&[u32], &[u32]); 5] = [
            (&[2], &[2]),
            (&[2, 49152], &[49152, 2]),
            (&[2, 49152, 49153, 2], &[49152, 49153, 2]),
            (&[0, 8, 16, 24], &[0, 8, 16, 24]),
            (&[2, 49152, 49153, 7, 1, 3, 100, 5000], &[49152, 49153, 2, 1, 3, 100, 7, 5000]),
        ];
        for (ids, expected) in cases {
            assert_eq!(python_set_order(ids.iter().copied()), expected, "ids {ids:?}");
        }
    }
}
