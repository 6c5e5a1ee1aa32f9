//! Output formats and colour.

use std::io::IsTerminal;

use serde::Serialize;

use crate::error::{CliError, Result};

/// `-o`: text for people, JSON or YAML for programs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
    Yaml,
}

/// `value` as JSON or YAML (text is the caller's own rendering).
pub fn structured<T: Serialize>(value: &T, format: Format) -> Result<String> {
    match format {
        Format::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| CliError::Output(e.to_string())),
        Format::Yaml | Format::Text => {
            serde_saphyr::to_string(value).map_err(|e| CliError::Output(e.to_string()))
        }
    }
}

/// What a command prints: its own `text` for `-o text`, else `value` as JSON or YAML.
pub fn shown<T: Serialize>(format: Format, text: String, value: &T) -> Result<String> {
    match format {
        Format::Text => Ok(text),
        f => structured(value, f),
    }
}

/// ANSI colour when stdout is a terminal and `NO_COLOR` is unset; plain text otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paint {
    pub on: bool,
}

impl Paint {
    pub fn for_stdout() -> Self {
        Paint {
            on: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn wrap(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub fn green(&self, text: &str) -> String {
        self.wrap("32", text)
    }
    pub fn red(&self, text: &str) -> String {
        self.wrap("31", text)
    }
    pub fn yellow(&self, text: &str) -> String {
        self.wrap("33", text)
    }
    pub fn bold(&self, text: &str) -> String {
        self.wrap("1", text)
    }
}
