//! HPACK (RFC 7541) for the headnode's forward client ([`crate::direct`]): a decoder for the
//! header blocks a datanode answers with, and the few representations the client's own requests
//! use.
//!
//! The decoder is complete (indexed fields, the three literal forms, dynamic table size
//! updates, Huffman-coded strings), because the peer's encoder decides what it sends: `h2`, under
//! every registro server, indexes most fields in its dynamic table and Huffman-codes strings when
//! that is shorter. It is strict where the RFC is (an index past the table, a size update after
//! a field or above the limit, an integer or string that runs past the block, a Huffman string
//! with EOS in it or bad padding are errors), and bounded: the dynamic table holds at most the
//! size this side advertised, and a block's decoded size is capped by the caller.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::sync::OnceLock;

/// The dynamic table size every HTTP/2 endpoint starts with (`SETTINGS_HEADER_TABLE_SIZE`'s
/// default), the most the forward client lets a peer's encoder use.
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// What each entry costs in a dynamic table besides its name and value (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// Why a header block could not be decoded. Any of them is a connection error
/// (`COMPRESSION_ERROR`): the two sides' tables can no longer be trusted to agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The block ends inside a representation.
    Truncated,
    /// An integer longer than any size this decoder takes.
    IntegerOverflow,
    /// An index of no entry (0, or past the dynamic table).
    BadIndex(usize),
    /// A dynamic table size update after a field, or above the advertised limit.
    BadSizeUpdate(usize),
    /// A Huffman-coded string with EOS in it, or padding that is not a prefix of EOS.
    BadHuffman,
    /// The block's fields add up to more than the caller takes.
    TooLarge(usize),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("a header block ends inside a field"),
            Error::IntegerOverflow => f.write_str("an integer in a header block is too large"),
            Error::BadIndex(i) => write!(
                f,
                "a header block refers to table entry {i}, which does not exist"
            ),
            Error::BadSizeUpdate(n) => {
                write!(
                    f,
                    "a header block resizes the table to {n} bytes where it may not"
                )
            }
            Error::BadHuffman => f.write_str("a header block holds a badly Huffman-coded string"),
            Error::TooLarge(n) => write!(f, "a header block decodes to more than {n} bytes"),
        }
    }
}

impl std::error::Error for Error {}

/// The static table (RFC 7541 Appendix A); entry `i` is at `STATIC[i - 1]`.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The Huffman code (RFC 7541 Appendix B) of each byte value: the code's bits, right-aligned,
/// and its length. EOS, symbol 256, is 30 one bits.
#[rustfmt::skip]
const HUFFMAN: [(u32, u8); 256] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28), (0xfffffe4, 28),
    (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28), (0xfffffe8, 28), (0xffffea, 24),
    (0x3ffffffc, 30), (0xfffffe9, 28), (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28),
    (0xfffffec, 28), (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28), (0xffffff4, 28),
    (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28), (0xffffff8, 28), (0xffffff9, 28),
    (0xffffffa, 28), (0xffffffb, 28), (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11), (0x3fa, 10), (0x3fb, 10), (0xf9, 8),
    (0x7fb, 11), (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6), (0x0, 5), (0x1, 5), (0x2, 5),
    (0x19, 6), (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6), (0x1e, 6), (0x1f, 6), (0x5c, 7),
    (0xfb, 8), (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), (0x1ffa, 13), (0x21, 6),
    (0x5d, 7), (0x5e, 7), (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7), (0x63, 7), (0x64, 7),
    (0x65, 7), (0x66, 7), (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7), (0x6b, 7), (0x6c, 7),
    (0x6d, 7), (0x6e, 7), (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), (0xfc, 8), (0x73, 7),
    (0xfd, 8), (0x1ffb, 13), (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6), (0x7ffd, 15),
    (0x3, 5), (0x23, 6), (0x4, 5), (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6), (0x27, 6), (0x6, 5),
    (0x74, 7), (0x75, 7), (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), (0x2b, 6), (0x76, 7),
    (0x2c, 6), (0x8, 5), (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7), (0x79, 7), (0x7a, 7),
    (0x7b, 7), (0x7ffe, 15), (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20), (0x3fffd3, 22), (0x3fffd4, 22),
    (0x3fffd5, 22), (0x7fffd9, 23), (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23), (0xffffec, 24), (0xffffed, 24),
    (0x3fffd7, 22), (0x7fffe0, 23), (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23), (0x3fffd9, 22), (0x7fffe6, 23),
    (0x7fffe7, 23), (0xffffef, 24), (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22),
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21), (0x7fffea, 23), (0x3fffdd, 22),
    (0x3fffde, 22), (0xfffff0, 24), (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21), (0x7fffed, 23), (0x3fffe1, 22),
    (0x7fffee, 23), (0x7fffef, 23), (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22),
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23), (0x3ffffe0, 26),
    (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19), (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22),
    (0x1ffffec, 25), (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25), (0x7fff2, 19),
    (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27), (0x7ffffe1, 27), (0x3ffffe7, 26),
    (0x7ffffe2, 27), (0xfffff2, 24), (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26),
    (0x3ffffe9, 26), (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21), (0x3fffe9, 22), (0x1fffe7, 21),
    (0x1fffe8, 21), (0x7ffff3, 23), (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25),
    (0x1ffffef, 25), (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26), (0x7ffffe7, 27),
    (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27), (0x7ffffeb, 27), (0xffffffe, 28),
    (0x7ffffec, 27), (0x7ffffed, 27), (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27),
    (0x3ffffee, 26),
];

/// A dynamic table entry: a field's name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// A decoder's state: the dynamic table the peer's encoder fills.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: entry 62 is `table[0]`.
    table: VecDeque<Entry>,
    /// What the entries cost (RFC 7541 §4.1).
    size: usize,
    /// The table's size now, as the peer last set it (at most `limit`).
    max_size: usize,
    /// The size this side advertised (`SETTINGS_HEADER_TABLE_SIZE`).
    limit: usize,
}

impl Decoder {
    /// A decoder whose peer may use a table of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
        }
    }

    /// Decodes one whole header block (HEADERS and any CONTINUATION payloads joined), calling
    /// `field(name, value)` for each field in order. Fails past `max_list` bytes of fields (each
    /// counted as RFC 7540's `SETTINGS_MAX_HEADER_LIST_SIZE` counts it: name, value and 32).
    pub fn decode(
        &mut self,
        mut block: &[u8],
        max_list: usize,
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), Error> {
        let mut list = 0usize;
        let mut fields_seen = false;
        while let Some(&first) = block.first() {
            let (name, value);
            if first & 0x80 != 0 {
                // Indexed field.
                let index = integer(&mut block, 7)?;
                let (n, v) = self.get(index)?;
                list = count(list, n.len() + v.len(), max_list)?;
                field(n, v);
                fields_seen = true;
                continue;
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing: into the table once read.
                let index = integer(&mut block, 6)?;
                name = self.name(index, &mut block)?;
                value = string(&mut block)?;
                list = count(list, name.len() + value.len(), max_list)?;
                field(&name, &value);
                self.insert(name.into_owned().into(), value.into_owned().into());
            } else if first & 0x20 != 0 {
                // Dynamic table size update: only before the block's first field.
                let size = integer(&mut block, 5)?;
                if fields_seen || size > self.limit {
                    return Err(Error::BadSizeUpdate(size));
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001): not kept.
                let index = integer(&mut block, 4)?;
                name = self.name(index, &mut block)?;
                value = string(&mut block)?;
                list = count(list, name.len() + value.len(), max_list)?;
                field(&name, &value);
            }
            fields_seen = true;
        }
        Ok(())
    }

    /// Entry `index` of the static table, then of the dynamic one.
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), Error> {
        match index {
            0 => Err(Error::BadIndex(0)),
            1..=61 => Ok(STATIC[index - 1]),
            _ => self
                .table
                .get(index - 62)
                .map(|(n, v)| (&n[..], &v[..]))
                .ok_or(Error::BadIndex(index)),
        }
    }

    /// A literal's name: (index 0) the string that follows, or a copy of entry `index`'s.
    fn name<'b>(&self, index: usize, block: &mut &'b [u8]) -> Result<Cow<'b, [u8]>, Error> {
        if index == 0 {
            string(block)
        } else {
            Ok(Cow::Owned(self.get(index)?.0.to_vec()))
        }
    }

    /// Adds an entry at the front, evicting from the back to make room; an entry larger than
    /// the whole table empties it and is not kept (RFC 7541 §4.4).
    fn insert(&mut self, name: Box<[u8]>, value: Box<[u8]>) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        self.evict(size);
        if size <= self.max_size {
            self.size += size;
            self.table.push_front((name, value));
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit (or the table is empty).
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((n, v)) = self.table.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
        }
    }
}

/// Adds a field of `bytes` (plus its overhead) to a block's running size.
fn count(list: usize, bytes: usize, max: usize) -> Result<usize, Error> {
    let list = list + bytes + ENTRY_OVERHEAD;
    if list > max {
        return Err(Error::TooLarge(max));
    }
    Ok(list)
}

/// An integer with an N-bit prefix (RFC 7541 §5.1), taken off the front of `block`.
fn integer(block: &mut &[u8], prefix: u32) -> Result<usize, Error> {
    let (&first, rest) = block.split_first().ok_or(Error::Truncated)?;
    *block = rest;
    let mask = (1usize << prefix) - 1;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let (&byte, rest) = block.split_first().ok_or(Error::Truncated)?;
        *block = rest;
        // Four continuation bytes hold 28 bits: more than any size or index this side takes.
        if shift > 21 {
            return Err(Error::IntegerOverflow);
        }
        value += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
    }
}

/// A string literal (RFC 7541 §5.2), taken off the front of `block`: its bytes, or the decoded
/// Huffman code.
fn string<'a>(block: &mut &'a [u8]) -> Result<Cow<'a, [u8]>, Error> {
    let huffman = block.first().ok_or(Error::Truncated)? & 0x80 != 0;
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(Error::Truncated);
    }
    let (bytes, rest) = block.split_at(len);
    *block = rest;
    if huffman {
        huffman_decode(bytes).map(Cow::Owned)
    } else {
        Ok(Cow::Borrowed(bytes))
    }
}

/// A node of the Huffman decoding tree: each child is another node's index, a leaf
/// (`LEAF | symbol`), or `NONE`.
type Node = [u16; 2];
const LEAF: u16 = 0x8000;
const NONE: u16 = 0;

/// The decoding tree of [`HUFFMAN`], built once. Node 0 is the root; a path ending in no node
/// is EOS's or not a code, both errors.
fn tree() -> &'static [Node] {
    static TREE: OnceLock<Vec<Node>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut nodes: Vec<Node> = vec![[NONE; 2]];
        for (symbol, &(code, len)) in (0u16..).zip(HUFFMAN.iter()) {
            let mut node = 0usize;
            for bit in (0..len).rev() {
                let branch = usize::from((code >> bit) & 1 == 1);
                if bit == 0 {
                    nodes[node][branch] = LEAF | symbol;
                } else {
                    if nodes[node][branch] == NONE {
                        // At most 255 inner nodes: far below LEAF.
                        nodes[node][branch] = nodes.len() as u16;
                        nodes.push([NONE; 2]);
                    }
                    node = usize::from(nodes[node][branch]);
                }
            }
        }
        nodes
    })
}

/// Decodes a Huffman-coded string: a bit at a time down the tree (the strings a datanode sends
/// are few and short, and indexed after their first time).
fn huffman_decode(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let tree = tree();
    let mut out = Vec::with_capacity(bytes.len() * 8 / 5);
    let mut node = 0usize;
    // Bits read since the last symbol, and whether all were ones (the only valid padding).
    let mut pending = 0u32;
    let mut ones = true;
    for &byte in bytes {
        for bit in (0..8).rev() {
            let branch = usize::from((byte >> bit) & 1);
            pending += 1;
            ones &= branch == 1;
            match tree[node][branch] {
                NONE => return Err(Error::BadHuffman),
                next if next & LEAF != 0 => {
                    // Symbols are bytes: the tree holds no EOS leaf.
                    out.push((next & !LEAF) as u8);
                    node = 0;
                    pending = 0;
                    ones = true;
                }
                next => node = usize::from(next),
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (the start of EOS).
    if pending > 7 || !ones {
        return Err(Error::BadHuffman);
    }
    Ok(out)
}

/// Appends an integer with an N-bit prefix (RFC 7541 §5.1) whose first byte starts with `flags`.
pub fn put_integer(out: &mut Vec<u8>, flags: u8, prefix: u32, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Appends a string literal, not Huffman-coded.
pub fn put_string(out: &mut Vec<u8>, text: &[u8]) {
    put_integer(out, 0, 7, text.len());
    out.extend_from_slice(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn decode(decoder: &mut Decoder, block: &str) -> Result<Vec<(String, String)>, Error> {
        let mut fields = Vec::new();
        decoder.decode(&hex(block), 1 << 20, |n, v| {
            fields.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        })?;
        Ok(fields)
    }

    fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    const AUTHORITY: (&str, &str) = (":authority", "www.example.com");

    /// RFC 7541 C.3 and C.4: three requests, without and with Huffman coding.
    #[test]
    fn the_rfc_requests_decode_with_and_without_huffman() {
        for blocks in [
            [
                "828684410f7777772e6578616d706c652e636f6d",
                "828684be58086e6f2d6361636865",
                "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
            ],
            [
                "828684418cf1e3c2e5f23a6ba0ab90f4ff",
                "828684be5886a8eb10649cbf",
                "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
            ],
        ] {
            let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
            let get = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
            let mut first = get.to_vec();
            first.push(AUTHORITY);
            assert_eq!(decode(&mut decoder, blocks[0]).unwrap(), fields(&first));
            first.push(("cache-control", "no-cache"));
            assert_eq!(decode(&mut decoder, blocks[1]).unwrap(), fields(&first));
            assert_eq!(
                decode(&mut decoder, blocks[2]).unwrap(),
                fields(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    AUTHORITY,
                    ("custom-key", "custom-value"),
                ])
            );
            assert_eq!(decoder.size, 164);
        }
    }

    /// RFC 7541 C.6: three responses in a 256-byte table, which evicts as it goes.
    #[test]
    fn the_rfc_responses_decode_through_evictions() {
        let mut decoder = Decoder::new(256);
        let location = ("location", "https://www.example.com");
        let date = ("date", "Mon, 21 Oct 2013 20:13:21 GMT");
        assert_eq!(
            decode(&mut decoder, "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3").unwrap(),
            fields(&[(":status", "302"), ("cache-control", "private"), date, location])
        );
        assert_eq!(
            decode(&mut decoder, "4883640effc1c0bf").unwrap(),
            fields(&[
                (":status", "307"),
                ("cache-control", "private"),
                date,
                location
            ])
        );
        assert_eq!(
            decode(&mut decoder, "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007").unwrap(),
            fields(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                location,
                ("content-encoding", "gzip"),
                ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
            ])
        );
        assert_eq!(decoder.size, 215);
        assert_eq!(decoder.table.len(), 3);
    }

    const X_LONG: &str = concat!(
        "3f4540889acac8b21234da8f81074085f2b507aa6fac18c6318c6318c6318c6318c6318c6318c631",
        "8c6318c6318c6318c6318c6318c6318c6318c6318c6318c6318f",
    );
    const X_HUGE: &str = concat!(
        "4085f2b4f6cc5fff178e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e",
        "38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38",
        "e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e3",
        "8e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e38e340",
        "889acac8b21234da8f8107",
    );

    /// Blocks as Python's `hpack` 4.2 encodes a gRPC server's answers (Huffman, indexing, a
    /// never-indexed field), then a table shrunk to 100 bytes by a size update, and a field
    /// larger than the whole table, which empties it.
    #[test]
    fn grpc_answers_size_updates_and_oversized_entries_decode() {
        let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
        let headers = |second: &str| {
            fields(&[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("date", &format!("Mon, 07 Dec 2026 16:00:0{second} GMT")),
            ])
        };
        let ok = fields(&[("grpc-status", "0")]);
        assert_eq!(
            decode(
                &mut decoder,
                "885f8b1d75d0620d263d4c4d65646196d07abe9403aa5f29141004e28172e001700053168dff"
            )
            .unwrap(),
            headers("0")
        );
        assert_eq!(
            decode(&mut decoder, "40889acac8b21234da8f8107").unwrap(),
            ok
        );
        assert_eq!(
            decode(
                &mut decoder,
                "88c06196d07abe9403aa5f29141004e28172e001700153168dff"
            )
            .unwrap(),
            headers("1")
        );
        assert_eq!(
            decode(
                &mut decoder,
                "7f00820b5f40899acac8b5254207317f9690691d4790aa880642a20227b52935532a20487f157f"
            )
            .unwrap(),
            fields(&[
                ("grpc-status", "14"),
                ("grpc-message", "datanode%20is%20shutting%20down")
            ])
        );
        assert_eq!(
            decode(&mut decoder, "1f088441496153c1").unwrap(),
            fields(&[("authorization", "secret"), ("grpc-status", "0")])
        );
        let long = "a".repeat(70);
        assert_eq!(
            decode(&mut decoder, X_LONG).unwrap(),
            fields(&[("grpc-status", "0"), ("x-long", &long)])
        );
        assert_eq!(decoder.max_size, 100);
        assert!(decoder.size <= 100);
        let huge = "b".repeat(200);
        assert_eq!(
            decode(&mut decoder, X_HUGE).unwrap(),
            fields(&[("x-huge", &huge), ("grpc-status", "0")])
        );
        assert_eq!(decoder.table.len(), 1);
    }

    #[test]
    fn what_the_rfc_forbids_is_refused() {
        let mut decoder = Decoder::new(DEFAULT_TABLE_SIZE);
        // Index 0, and an index past an empty dynamic table.
        assert_eq!(decode(&mut decoder, "80"), Err(Error::BadIndex(0)));
        assert_eq!(decode(&mut decoder, "be"), Err(Error::BadIndex(62)));
        // A size update after a field, and one above the advertised limit (4097).
        assert_eq!(
            decode(&mut decoder, "883f00"),
            Err(Error::BadSizeUpdate(31))
        );
        assert_eq!(
            decode(&mut decoder, "3fe21f"),
            Err(Error::BadSizeUpdate(4097))
        );
        // Cut inside an integer, a string's length, and a string.
        assert_eq!(decode(&mut decoder, "ff"), Err(Error::Truncated));
        assert_eq!(decode(&mut decoder, "40"), Err(Error::Truncated));
        assert_eq!(decode(&mut decoder, "4003616263"), Err(Error::Truncated));
        // An integer of more than four continuation bytes.
        assert_eq!(
            decode(&mut decoder, "ffffffffff7f"),
            Err(Error::IntegerOverflow)
        );
        // Huffman: EOS inside a string (30 ones), and padding of zeros.
        assert_eq!(
            decode(&mut decoder, "0f1084fffffffc"),
            Err(Error::BadHuffman)
        );
        assert_eq!(decode(&mut decoder, "0f108100"), Err(Error::BadHuffman));
        // Padding longer than 7 bits ("a" is 00011, then 11 ones).
        assert_eq!(decode(&mut decoder, "0f10831fffff"), Err(Error::BadHuffman));
        // A block over the caller's limit.
        let mut big = Decoder::new(DEFAULT_TABLE_SIZE);
        assert_eq!(
            big.decode(&hex("8888"), 60, |_, _| {}),
            Err(Error::TooLarge(60))
        );
    }

    #[test]
    fn every_byte_value_round_trips_through_the_huffman_code() {
        // Encoded here bit by bit from the table, then decoded.
        let text: Vec<u8> = (0..=255u8).chain(*b"application/grpc").collect();
        let mut bits: Vec<bool> = Vec::new();
        for &b in &text {
            let (code, len) = HUFFMAN[usize::from(b)];
            bits.extend((0..len).rev().map(|i| (code >> i) & 1 == 1));
        }
        while bits.len() % 8 != 0 {
            bits.push(true);
        }
        let bytes: Vec<u8> = bits
            .chunks(8)
            .map(|c| c.iter().fold(0u8, |acc, &b| acc << 1 | u8::from(b)))
            .collect();
        assert_eq!(huffman_decode(&bytes).unwrap(), text);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder() {
        // A fixed xorshift sequence: the same inputs every run.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut decoder = Decoder::new(256);
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let block: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decoder.decode(&block, 4096, |_, _| {});
            assert!(decoder.size <= decoder.max_size);
        }
    }

    #[test]
    fn integers_and_strings_are_written_as_decoded() {
        for value in [0, 1, 14, 15, 16, 127, 128, 1337, 4096, 1 << 20] {
            let mut out = vec![];
            put_integer(&mut out, 0x40, 6, value);
            let mut block = &out[..];
            assert_eq!(integer(&mut block, 6).unwrap(), value);
            assert!(block.is_empty());
        }
        let mut out = vec![];
        put_string(&mut out, b"/registro.v1.Datanode/StoreBatch");
        let mut block = &out[..];
        assert_eq!(
            &*string(&mut block).unwrap(),
            b"/registro.v1.Datanode/StoreBatch"
        );
    }
}
