//! Config errors: each one names the file, line and column.

use std::collections::HashSet;
use std::fmt;

use crate::node::Mark;

/// One problem in a config file, at a 1-based line and column (line 0: the
/// file as a whole, shown as `file: message`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The protective limit the file ran into, if that is why it was
    /// refused: for the caller to count (`kaname_limits_hit_total{limit}`).
    pub limit: Option<Limit>,
}

/// The limits of `docs`' limits table that the config reader enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// YAML nested deeper than [`crate::MAX_DEPTH`] levels.
    ConfigDepth,
    /// Aliases expanding the document past [`crate::MAX_EXPANSION_FACTOR`]×
    /// its size, or past [`crate::MAX_EXPANDED_BYTES`].
    ConfigExpansion,
}

impl Limit {
    /// The `limit` label: `config_depth`, `config_expansion`.
    pub fn name(self) -> &'static str {
        match self {
            Limit::ConfigDepth => "config_depth",
            Limit::ConfigExpansion => "config_expansion",
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file, self.message),
            line => write!(f, "{}:{line}:{}: {}", self.file, self.column, self.message),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// All errors found in one pass, in file order. Display = one error per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// The limit that refused the file, when one did (such a refusal is
    /// then the only error: nothing past it is read).
    pub fn limit(&self) -> Option<Limit> {
        self.0.iter().find_map(|e| e.limit)
    }
}

/// Collects errors while a file is read; the parser never stops at the first.
#[derive(Debug)]
pub(crate) struct Errors {
    file: String,
    list: Vec<ConfigError>,
    /// Positions whose value is already known to be wrong (an unset
    /// `${VAR}`): later complaints about the same value are dropped. A set:
    /// aliases can repeat one bad value many times.
    poisoned: HashSet<Mark>,
}

impl Errors {
    pub(crate) fn new(file: &str) -> Self {
        Errors {
            file: file.to_string(),
            list: Vec::new(),
            poisoned: HashSet::new(),
        }
    }

    pub(crate) fn at(&mut self, mark: Mark, message: impl Into<String>) {
        if self.poisoned.contains(&mark) {
            return;
        }
        self.list.push(ConfigError {
            file: self.file.clone(),
            line: mark.line,
            column: mark.column,
            message: message.into(),
            limit: None,
        });
    }

    /// A refusal by one of the limits.
    pub(crate) fn limit(&mut self, mark: Mark, message: impl Into<String>, limit: Limit) {
        self.list.push(ConfigError {
            file: self.file.clone(),
            line: mark.line,
            column: mark.column,
            message: message.into(),
            limit: Some(limit),
        });
    }

    /// Reports an error and drops any later one at the same position.
    pub(crate) fn poison(&mut self, mark: Mark, message: impl Into<String>) {
        self.at(mark, message);
        self.poisoned.insert(mark);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Sorted by position; the same error reached twice (through an alias) once.
    pub(crate) fn finish(mut self) -> ConfigErrors {
        self.list.sort_by_key(|e| (e.line, e.column));
        self.list.dedup();
        ConfigErrors(self.list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_deduplicated_one_per_line() {
        let mut errs = Errors::new("k.yaml");
        errs.at(Mark::new(3, 1), "b");
        errs.at(Mark::new(1, 5), "a");
        errs.at(Mark::new(3, 1), "b");
        let all = errs.finish();
        assert_eq!(all.to_string(), "k.yaml:1:5: a\nk.yaml:3:1: b");
    }
}
