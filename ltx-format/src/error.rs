//! The codec's one error type. Every format violation names the rule it broke
//! and, where known, the byte offset and page number, so that a caller can add
//! the file name and print something a person can act on.

use std::fmt;
use std::io;

/// The rule of the LTX format (or of applying a chain) that a file broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// The file ended before a structure was complete.
    Truncated,
    Magic,
    HeaderFlags,
    PageSize,
    Txid,
    WalFields,
    PreApplyChecksum,
    ReservedBytes,
    PageHeader,
    Lz4Block,
    PayloadSize,
    PageBeyondCommit,
    LockPage,
    PageOrder,
    SnapshotIncomplete,
    PageIndex,
    UnexpectedBytes,
    FileChecksum,
    PostApplyChecksum,
    FileName,
    TxidContinuity,
    PageSizeMismatch,
    /// A SQLite database file (not an LTX file) is malformed.
    Database,
    /// A SQLite WAL file is malformed.
    Wal,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Truncated => "truncated file",
            Rule::Magic => "magic",
            Rule::HeaderFlags => "header flags",
            Rule::PageSize => "page size",
            Rule::Txid => "TXID range",
            Rule::WalFields => "WAL fields",
            Rule::PreApplyChecksum => "pre-apply checksum",
            Rule::ReservedBytes => "reserved header bytes",
            Rule::PageHeader => "page header",
            Rule::Lz4Block => "LZ4 payload",
            Rule::PayloadSize => "page payload size",
            Rule::PageBeyondCommit => "page beyond commit",
            Rule::LockPage => "lock page",
            Rule::PageOrder => "page order",
            Rule::SnapshotIncomplete => "snapshot completeness",
            Rule::PageIndex => "page index",
            Rule::UnexpectedBytes => "unexpected bytes",
            Rule::FileChecksum => "file checksum",
            Rule::PostApplyChecksum => "post-apply checksum",
            Rule::FileName => "file name",
            Rule::TxidContinuity => "TXID continuity",
            Rule::PageSizeMismatch => "page size mismatch",
            Rule::Database => "database file",
            Rule::Wal => "WAL file",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A broken rule with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: Rule,
    pub detail: String,
    pub offset: Option<u64>,
    pub pgno: Option<u32>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule, self.detail)?;
        match (self.offset, self.pgno) {
            (Some(o), Some(p)) => write!(f, " (offset {o}, page {p})"),
            (Some(o), None) => write!(f, " (offset {o})"),
            (None, Some(p)) => write!(f, " (page {p})"),
            (None, None) => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The input breaks a rule of the format.
    #[error("{0}")]
    Invalid(Box<Violation>),
    /// The caller asked the encoder or compactor for something the format forbids.
    #[error("invalid use: {0}")]
    Usage(String),
}

impl Error {
    pub(crate) fn invalid(rule: Rule, detail: impl Into<String>) -> Self {
        Error::Invalid(Box::new(Violation {
            rule,
            detail: detail.into(),
            offset: None,
            pgno: None,
        }))
    }

    pub(crate) fn at(mut self, offset: u64) -> Self {
        if let Error::Invalid(v) = &mut self {
            v.offset = Some(offset);
        }
        self
    }

    pub(crate) fn page(mut self, pgno: u32) -> Self {
        if let Error::Invalid(v) = &mut self {
            v.pgno = Some(pgno);
        }
        self
    }

    /// The rule that was broken, if this is a format error.
    pub fn rule(&self) -> Option<Rule> {
        match self {
            Error::Invalid(v) => Some(v.rule),
            _ => None,
        }
    }

    /// True for format violations (as opposed to I/O errors and misuse).
    pub fn is_invalid(&self) -> bool {
        matches!(self, Error::Invalid(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
