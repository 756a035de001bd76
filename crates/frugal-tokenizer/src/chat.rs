//! Chat templates: turn a conversation into the prompt text a model was
//! trained on.
//!
//! Models carry their template as a Jinja program in `tokenizer.chat_template`.
//! Rather than run Jinja, this module recognises the template family and
//! reproduces its output for plain messages (no tools):
//!
//! * ChatML (`<|im_start|>role\ncontent<|im_end|>\n`), used by SmolLM2 and
//!   Qwen2.5. The default system prompt the template inserts when the
//!   conversation has none is read from the template text itself, e.g.
//!   Qwen2.5's "You are Qwen, created by Alibaba Cloud. You are a helpful
//!   assistant." and SmolLM2-Instruct's "You are a helpful AI assistant named
//!   SmolLM, trained by Hugging Face".
//! * Plain: no template (llama2.c and base models): the message contents,
//!   each followed by a newline.

use frugal_formats::Metadata;

use crate::TokenizerError;

/// Who said a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's answer (Qwen2.5 wraps it in `<tool_response>`).
    Tool,
    Other(String),
}

impl Role {
    pub fn as_str(&self) -> &str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
            Role::Other(s) => s,
        }
    }

    pub fn parse(s: &str) -> Role {
        match s {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => Role::Other(other.to_string()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> ChatMessage {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> ChatMessage {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> ChatMessage {
        Self::new(Role::Assistant, content)
    }
}

/// When a ChatML template adds its default system prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultSystemWhen {
    /// Whenever the first message is not a system message, even with no
    /// messages at all (Qwen2.5: the header is outside the message loop).
    Always,
    /// Only before a first message that is not a system message (SmolLM2: the
    /// check sits inside the loop, on `loop.first`).
    BeforeFirstMessage,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatTemplate {
    ChatMl {
        /// The system prompt inserted when the conversation has none.
        default_system: Option<String>,
        default_when: DefaultSystemWhen,
        /// Tool results are wrapped as Qwen2.5 does (`<|im_start|>user\n<tool_response>...`).
        qwen_tools: bool,
    },
    /// No template: contents one per line, nothing added for the reply.
    Plain,
}

const TEMPLATE_KEY: &str = "tokenizer.chat_template";

impl ChatTemplate {
    /// ChatML with no default system prompt.
    pub fn chatml() -> ChatTemplate {
        ChatTemplate::ChatMl {
            default_system: None,
            default_when: DefaultSystemWhen::BeforeFirstMessage,
            qwen_tools: false,
        }
    }

    /// The template of a model: `Plain` when the metadata has none, an error
    /// naming the template when it is of a family this crate cannot render.
    pub fn from_metadata(md: &Metadata) -> Result<ChatTemplate, TokenizerError> {
        match md.get(TEMPLATE_KEY) {
            None => Ok(ChatTemplate::Plain),
            Some(v) => {
                let t = v.as_str().ok_or_else(|| TokenizerError::BadMetadata {
                    key: TEMPLATE_KEY.to_string(),
                    reason: "expected a string".to_string(),
                })?;
                Self::from_template_text(t)
            }
        }
    }

    /// Recognise a Jinja chat template by its text.
    pub fn from_template_text(t: &str) -> Result<ChatTemplate, TokenizerError> {
        if t.contains("<|im_start|>") {
            let default_system = default_system_prompt(t);
            let default_when = match (t.find("for message in messages"), default_system_pos(t)) {
                (Some(loop_at), Some(sys_at)) if loop_at > sys_at => DefaultSystemWhen::Always,
                _ => DefaultSystemWhen::BeforeFirstMessage,
            };
            return Ok(ChatTemplate::ChatMl {
                default_system,
                default_when,
                qwen_tools: t.contains("<tool_response>"),
            });
        }
        let head: String = t.chars().take(80).collect();
        Err(TokenizerError::Unsupported(format!(
            "chat template not recognised (only ChatML templates are implemented): {head:?}..."
        )))
    }
}

/// Jinja string-literal escapes as they appear inside a template.
fn unescape_jinja(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

/// Where the literal default system prompt starts, and its raw text: a
/// `<|im_start|>system` + newline followed by literal text (no quotes, so not
/// `' + messages[0]['content'] + '`) up to `<|im_end|>`.
fn find_default_system(t: &str) -> Option<(usize, &str)> {
    const OPEN: &str = "<|im_start|>system";
    let mut from = 0;
    while let Some(rel) = t[from..].find(OPEN) {
        let at = from + rel;
        let rest = &t[at + OPEN.len()..];
        from = at + OPEN.len();
        let body = if let Some(b) = rest.strip_prefix("\\n") {
            b
        } else if let Some(b) = rest.strip_prefix('\n') {
            b
        } else {
            continue;
        };
        let Some(end) = body.find("<|im_end|>") else {
            continue;
        };
        let text = &body[..end];
        if !text.is_empty() && !text.contains(['\'', '"', '{', '}']) {
            return Some((at, text));
        }
    }
    None
}

fn default_system_prompt(t: &str) -> Option<String> {
    find_default_system(t).map(|(_, s)| unescape_jinja(s))
}

fn default_system_pos(t: &str) -> Option<usize> {
    find_default_system(t).map(|(at, _)| at)
}

/// Render a conversation; with `add_generation_prompt`, end with the header of
/// the assistant's reply.
pub fn render_chat(
    template: ChatTemplate,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> String {
    render_chat_ref(&template, messages, add_generation_prompt)
}

/// [`render_chat`] without giving up the template.
pub fn render_chat_ref(
    template: &ChatTemplate,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> String {
    let mut out = String::new();
    match template {
        ChatTemplate::Plain => {
            for m in messages {
                out.push_str(&m.content);
                out.push('\n');
            }
        }
        ChatTemplate::ChatMl {
            default_system,
            default_when,
            qwen_tools,
        } => {
            let first_is_system = messages.first().is_some_and(|m| m.role == Role::System);
            let wants_default = match default_when {
                DefaultSystemWhen::Always => true,
                DefaultSystemWhen::BeforeFirstMessage => !messages.is_empty(),
            };
            if let (Some(sys), false, true) = (default_system, first_is_system, wants_default) {
                push_turn(&mut out, "system", sys);
            }
            for (i, m) in messages.iter().enumerate() {
                if m.role == Role::Tool && *qwen_tools {
                    let prev_tool = i > 0 && messages[i - 1].role == Role::Tool;
                    let next_tool = messages.get(i + 1).is_some_and(|n| n.role == Role::Tool);
                    if !prev_tool {
                        out.push_str("<|im_start|>user");
                    }
                    out.push_str("\n<tool_response>\n");
                    out.push_str(&m.content);
                    out.push_str("\n</tool_response>");
                    if !next_tool {
                        out.push_str("<|im_end|>\n");
                    }
                    continue;
                }
                push_turn(&mut out, m.role.as_str(), &m.content);
            }
            if add_generation_prompt {
                out.push_str("<|im_start|>assistant\n");
            }
        }
    }
    out
}

fn push_turn(out: &mut String, role: &str, content: &str) {
    out.push_str("<|im_start|>");
    out.push_str(role);
    out.push('\n');
    out.push_str(content);
    out.push_str("<|im_end|>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The template of Qwen2.5-Coder-0.5B-Instruct's GGUF (`tokenizer.chat_template`).
    const QWEN25: &str = include_str!("../tests/data/qwen2.5-chat-template.jinja");
    /// The template of SmolLM2-135M-Instruct's GGUF.
    const SMOLLM2: &str = include_str!("../tests/data/smollm2-chat-template.jinja");

    #[test]
    fn qwen_default_system() {
        let t = ChatTemplate::from_template_text(QWEN25).unwrap();
        assert_eq!(
            t,
            ChatTemplate::ChatMl {
                default_system: Some(
                    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                        .to_string()
                ),
                default_when: DefaultSystemWhen::Always,
                qwen_tools: true,
            }
        );
        let s = render_chat(t.clone(), &[ChatMessage::user("Hi!")], true);
        assert_eq!(
            s,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
             <|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
        );
        let s = render_chat(
            t.clone(),
            &[
                ChatMessage::system("Be brief."),
                ChatMessage::user("Hi"),
                ChatMessage::assistant("Hello."),
                ChatMessage::user("Bye"),
            ],
            false,
        );
        assert_eq!(
            s,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        );
        // No messages: Qwen's header is outside the loop.
        assert_eq!(
            render_chat(t, &[], false),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        );
    }

    #[test]
    fn smollm_default_system() {
        let t = ChatTemplate::from_template_text(SMOLLM2).unwrap();
        let s = render_chat(t.clone(), &[ChatMessage::user("What is 2+2?")], true);
        assert_eq!(
            s,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(render_chat(t.clone(), &[], true), "<|im_start|>assistant\n");
        let s = render_chat(
            t,
            &[ChatMessage::system("S"), ChatMessage::user("U")],
            false,
        );
        assert_eq!(
            s,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        );
    }

    #[test]
    fn qwen_tool_messages() {
        let t = ChatTemplate::from_template_text(QWEN25).unwrap();
        let s = render_chat(
            t,
            &[
                ChatMessage::system("S"),
                ChatMessage::new(Role::Tool, "a"),
                ChatMessage::new(Role::Tool, "b"),
            ],
            false,
        );
        assert_eq!(
            s,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n<tool_response>\na\n</tool_response>\n<tool_response>\nb\n</tool_response><|im_end|>\n"
        );
    }

    #[test]
    fn plain_and_unknown() {
        let s = render_chat(
            ChatTemplate::Plain,
            &[ChatMessage::system("a"), ChatMessage::user("b")],
            true,
        );
        assert_eq!(s, "a\nb\n");
        let err =
            ChatTemplate::from_template_text("{{ bos_token }}[INST] {{ m }} [/INST]").unwrap_err();
        assert!(err.to_string().contains("[INST]"), "{err}");
        assert_eq!(
            ChatTemplate::from_metadata(&Metadata::default()).unwrap(),
            ChatTemplate::Plain
        );
    }
}
