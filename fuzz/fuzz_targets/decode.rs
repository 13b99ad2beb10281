//! Arbitrary bytes into the strict decoder and the page-index reader: any
//! input may be rejected, none may panic, hang or allocate without bound.
//! A file the decoder accepts must also read the same through its index.
//! Inputs that fail only on their file checksum are retried with the right
//! checksum, to reach the rules the decoder checks after it.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use ltx_format::index::{read_page, read_page_index};
use ltx_format::Decoder;

mod common;

fn check(data: &[u8]) {
    let verified = ltx_format::verify(Cursor::new(data));

    let mut c = Cursor::new(data);
    let indexed = read_page_index(&mut c);
    if let Ok((header, index)) = &indexed {
        // Random access through whatever index the file claims.
        let mut page = vec![0u8; header.page_size.as_usize()];
        for e in index.entries.iter().take(64) {
            let _ = read_page(&mut c, header, e, &mut page);
        }
    }

    if let Ok(summary) = verified {
        assert_eq!(summary.size, data.len() as u64);
        let (header, index) = indexed.expect("a verified file's index reads");
        assert_eq!(header, summary.header);
        assert_eq!(index, summary.index);
        // Streaming and random access give the same pages.
        let mut dec = Decoder::new(Cursor::new(data)).expect("header decodes twice");
        let ps = header.page_size.as_usize();
        let mut streamed = vec![0u8; ps];
        let mut random = vec![0u8; ps];
        let mut c = Cursor::new(data);
        for e in &index.entries {
            let pgno = dec.next_page(&mut streamed).expect("decodes twice");
            assert_eq!(pgno, Some(e.pgno));
            read_page(&mut c, &header, e, &mut random).expect("indexed page reads");
            assert!(streamed == random, "page {} differs", e.pgno);
        }
        assert_eq!(dec.next_page(&mut streamed).expect("end decodes"), None);
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(fixed) = common::with_fixed_checksum(data) {
        check(&fixed);
    }
});
