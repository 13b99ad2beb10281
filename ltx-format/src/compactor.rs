//! Compaction: merge a contiguous run of LTX files into one.
//!
//! Inputs come in ascending TXID order with one page size. For each page the
//! copy from the latest input wins; pages beyond the last input's Commit are
//! dropped. The output takes MinTXID, PreApply from the first input and
//! MaxTXID, Commit, Timestamp, PostApply from the last (Go's `ltx.Compactor`).
//! Every input is decoded to its end, checksums verified, before the output is
//! finished; a caller writes the output to a temporary file and keeps it only
//! on success.

use std::io::{Read, Write};

use crate::checksum::Checksum;
use crate::decoder::Decoder;
use crate::encoder::Encoder;
use crate::error::{Error, Result, Rule};
use crate::header::{Header, Trailer, HEADER_FLAG_NO_CHECKSUM};
use crate::is_contiguous;

#[derive(Debug, Clone, Copy, Default)]
pub struct CompactOptions {
    /// Write a NoChecksum file (Litestream-compatible). Otherwise the inputs'
    /// database checksums are carried over, and every input must have them.
    pub no_checksum: bool,
    /// Accept gaps between inputs (Go's `AllowNonContiguousTXIDs`).
    pub allow_non_contiguous: bool,
    /// Write a snapshot (MinTXID 1, no pre-apply checksum) even when the first
    /// input starts later: valid when that input holds every page (a snapshot
    /// or a full-page file), which the encoder checks.
    pub snapshot: bool,
}

struct Input<R: Read> {
    dec: Decoder<R>,
    page: Vec<u8>,
    cur: Option<u32>,
}

/// Compacts `inputs` into `out`; returns the writer, the output header and trailer.
pub fn compact<R: Read, W: Write>(
    inputs: Vec<R>,
    out: W,
    opts: CompactOptions,
) -> Result<(W, Header, Trailer)> {
    if inputs.is_empty() {
        return Err(Error::Usage("compaction needs at least one input".into()));
    }
    let mut ins = Vec::with_capacity(inputs.len());
    for r in inputs {
        let dec = Decoder::new(r)?;
        let page = vec![0u8; dec.header().page_size.as_usize()];
        ins.push(Input {
            dec,
            page,
            cur: None,
        });
    }
    check_inputs(&ins, &opts)?;
    let header = output_header(&ins, &opts);
    let mut enc = Encoder::new(out, header)?;
    merge_pages(&mut ins, &mut enc, header.commit)?;
    let post = if header.no_checksum() {
        Checksum::ZERO
    } else {
        ins[ins.len() - 1]
            .dec
            .trailer()
            .map_or(Checksum::ZERO, |t| t.post_apply_checksum)
    };
    let (w, trailer) = enc.finish(post)?;
    Ok((w, header, trailer))
}

/// Same page size, TXIDs that continue each other (unless allowed not to),
/// and database checksums on every input if the output is to carry them.
fn check_inputs<R: Read>(ins: &[Input<R>], opts: &CompactOptions) -> Result<()> {
    let first = *ins[0].dec.header();
    let mut prev = first;
    for (i, inp) in ins.iter().enumerate().skip(1) {
        let h = inp.dec.header();
        if h.page_size != first.page_size {
            return Err(Error::invalid(
                Rule::PageSizeMismatch,
                format!(
                    "input {i} has page size {}, input 0 has {}",
                    h.page_size, first.page_size
                ),
            ));
        }
        if !opts.allow_non_contiguous && !is_contiguous(prev.max_txid, h.min_txid, h.max_txid) {
            return Err(Error::invalid(
                Rule::TxidContinuity,
                format!(
                    "input {i} ({}-{}) does not continue input {} (..{})",
                    h.min_txid,
                    h.max_txid,
                    i - 1,
                    prev.max_txid
                ),
            ));
        }
        prev = *h;
    }
    if !opts.no_checksum {
        if let Some((i, _)) = ins
            .iter()
            .enumerate()
            .find(|(_, x)| x.dec.header().no_checksum())
        {
            return Err(Error::Usage(format!(
                "cannot carry database checksums: input {i} has the NoChecksum flag; compact with no_checksum"
            )));
        }
    }
    Ok(())
}

/// The output covers the inputs' TXIDs (from 1 for a snapshot) and ends
/// with the last input's size and time.
fn output_header<R: Read>(ins: &[Input<R>], opts: &CompactOptions) -> Header {
    let first = *ins[0].dec.header();
    let last = *ins[ins.len() - 1].dec.header();
    let min = if opts.snapshot {
        crate::Txid(1)
    } else {
        first.min_txid
    };
    let mut header = Header::new(first.page_size, last.commit, min, last.max_txid);
    header.timestamp_ms = last.timestamp_ms;
    if opts.no_checksum {
        header.flags = HEADER_FLAG_NO_CHECKSUM;
    } else if !opts.snapshot {
        header.pre_apply_checksum = first.pre_apply_checksum;
    }
    header
}

/// Merges the inputs' pages in page order: the latest input holding a page
/// wins; pages past `commit` are dropped.
fn merge_pages<R: Read, W: Write>(
    ins: &mut [Input<R>],
    enc: &mut Encoder<W>,
    commit: u32,
) -> Result<()> {
    for inp in ins.iter_mut() {
        inp.cur = inp.dec.next_page(&mut inp.page)?;
    }
    while let Some(min) = ins.iter().filter_map(|x| x.cur).min() {
        if min <= commit {
            let winner = ins
                .iter()
                .rposition(|x| x.cur == Some(min))
                .ok_or_else(|| Error::Usage("merge lost its page".into()))?;
            enc.encode_page(min, &ins[winner].page)?;
        }
        for inp in ins.iter_mut().filter(|x| x.cur == Some(min)) {
            let next = inp.dec.next_page(&mut inp.page)?;
            if let Some(n) = next {
                if n <= min {
                    return Err(Error::invalid(
                        Rule::PageOrder,
                        format!("page numbers must ascend: page {n} after page {min}"),
                    ));
                }
            }
            inp.cur = next;
        }
    }
    Ok(())
}
