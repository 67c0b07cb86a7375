//! Byte-level mutations for the property tests of the record parsers: a
//! valid record changed the way a corrupt or hostile writer would.

use proptest::prelude::*;
use proptest::sample::Index;

#[derive(Debug, Clone)]
pub(crate) enum ByteEdit {
    Set(Index, u8),
    /// A 2-, 4- or 8-byte field overwritten (lengths, offsets, counts).
    Word(Index, u64, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
}

pub(crate) fn byte_edits(max: usize) -> impl Strategy<Value = Vec<ByteEdit>> {
    let word = prop_oneof![Just(0u64), Just(1), Just(u64::MAX), Just(u64::from(u32::MAX)), Just(u64::from(u16::MAX)), any::<u64>()];
    proptest::collection::vec(
        prop_oneof![
            4 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteEdit::Set(i, b)),
            3 => (any::<Index>(), word, prop_oneof![Just(2u8), Just(4), Just(8)]).prop_map(|(i, w, n)| ByteEdit::Word(i, w, n)),
            1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
            1 => (any::<Index>(), 1usize..32).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
            1 => any::<Index>().prop_map(ByteEdit::Truncate),
        ],
        1..=max,
    )
}

pub(crate) fn apply_bytes(data: &[u8], edits: &[ByteEdit]) -> Vec<u8> {
    let mut b = data.to_vec();
    for e in edits {
        match e {
            ByteEdit::Set(i, v) if !b.is_empty() => {
                let i = i.index(b.len());
                b[i] = *v;
            }
            ByteEdit::Word(i, w, n) if b.len() >= usize::from(*n) => {
                let n = usize::from(*n);
                let i = i.index(b.len() - n + 1);
                b[i..i + n].copy_from_slice(&w.to_ne_bytes()[..n]);
            }
            ByteEdit::Insert(i, v) => {
                let i = i.index(b.len() + 1);
                b.splice(i..i, v.iter().copied());
            }
            ByteEdit::Delete(i, n) if !b.is_empty() => {
                let i = i.index(b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            ByteEdit::Truncate(i) => {
                let i = i.index(b.len() + 1);
                b.truncate(i);
            }
            _ => {}
        }
    }
    b
}
