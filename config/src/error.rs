//! Config errors: each one names the file, line and column.

use std::fmt;

use crate::node::Mark;

/// One problem in a config file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
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

/// Collects errors while a file is read; the parser never stops at the first.
#[derive(Debug)]
pub(crate) struct Errors {
    file: String,
    list: Vec<ConfigError>,
    /// Positions whose value is already known to be wrong (an unset
    /// `${VAR}`): later complaints about the same value are dropped.
    poisoned: Vec<Mark>,
}

impl Errors {
    pub(crate) fn new(file: &str) -> Self {
        Errors {
            file: file.to_string(),
            list: Vec::new(),
            poisoned: Vec::new(),
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
        });
    }

    /// Reports an error and drops any later one at the same position.
    pub(crate) fn poison(&mut self, mark: Mark, message: impl Into<String>) {
        self.at(mark, message);
        self.poisoned.push(mark);
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
