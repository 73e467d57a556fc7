//! Reading a capture as a stream: pcap (tcpdump's default) and pcapng (Wireshark's, and
//! tcpdump's with `--pcapng`), through pcap-parser's streaming readers over a fixed
//! buffer, so memory does not grow with the file.
//!
//! What cannot be read never panics and never loses what came before it:
//! - nothing that is a capture at all (empty, another format, a header cut short) is a
//!   usage error (exit code 2) that says what the file is and what to give instead;
//! - a capture cut short or corrupt after its header ends the reading there
//!   ([`Outcome::stopped`] says where: "capture truncated after N packets at byte B"), and
//!   the report covers the packets before it (the caller then exits with code 2).

use std::{
    io::{Cursor, ErrorKind, Read},
    panic::{AssertUnwindSafe, catch_unwind},
};

use pcap_parser::{
    Block, LegacyPcapReader, Linktype, PcapBlockOwned, PcapError, PcapNGReader,
    traits::{PcapNGPacketBlock as _, PcapReaderIterator},
};

use crate::error::usage;

/// The reader's buffer: blocks are parsed in place from it.
const BUFFER: usize = 1 << 20;
/// The buffer may grow to hold one block this large; a block claiming more is corrupt
/// (pcap's largest snap length is 256 KiB).
const MAX_BLOCK: usize = 16 << 20;
/// What is read ahead to recognise the format (and handed on to the reader).
const HEAD: usize = 64 << 10;

/// One captured frame.
pub struct Frame<'a> {
    /// Capture time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub linktype: Linktype,
    /// The captured bytes (at most the snap length).
    pub data: &'a [u8],
}

/// What reading the whole capture found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// `pcap` or `pcapng`.
    pub format: &'static str,
    pub packets: u64,
    /// Bytes of the file read (up to the point where reading stopped).
    pub bytes: u64,
    /// What could not be read, each said once.
    pub warnings: Vec<String>,
    /// Why the reading stopped before the end of the input (also among the warnings):
    /// the capture is cut short or corrupt there.
    pub stopped: Option<String>,
    /// Packet blocks whose interface was never described (pcapng), skipped.
    pub orphans: u64,
}

enum Format {
    Pcap,
    PcapNg,
}

/// Read the whole capture, handing each frame to `on_frame` in file order.
pub fn read<R: Read + Send>(
    mut input: R,
    name: &str,
    mut on_frame: impl FnMut(&Frame<'_>),
) -> anyhow::Result<Outcome> {
    // Read ahead until the buffer is full or the input ends: a pipe may hand over a few
    // bytes at a time, and the readers below parse the header from their first read.
    let mut head = vec![0u8; HEAD];
    let mut n = 0;
    while n < head.len() {
        match input.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(usage(format!("cannot read {name}: {e}"))),
        }
    }
    head.truncate(n);
    let format = detect(&head, name)?;
    let stream = Cursor::new(head).chain(input);
    let mut out = Outcome::default();
    let mut reader: Box<dyn PcapReaderIterator + Send> = match format {
        Format::Pcap => {
            out.format = "pcap";
            Box::new(LegacyPcapReader::new(BUFFER, stream).map_err(|e| header_error(name, n, &e))?)
        }
        Format::PcapNg => {
            out.format = "pcapng";
            Box::new(PcapNGReader::new(BUFFER, stream).map_err(|e| header_error(name, n, &e))?)
        }
    };

    // pcap: one link type and time unit for the file. pcapng: per interface, per section.
    let mut legacy: Option<(Linktype, u64)> = None;
    let mut interfaces: Vec<(Linktype, u64, i64)> = Vec::new();
    let mut last_ts = 0u64;
    let mut stalls = 0u32;
    loop {
        // The parser is a library: should it ever panic on some input, stop reading
        // there like at any other corruption instead of losing the whole report.
        let at = reader.consumed() as u64;
        let next = {
            let r = &mut *reader;
            catch_unwind(AssertUnwindSafe(move || {
                let r = r;
                r.next()
            }))
        };
        let next = match next {
            Ok(n) => n,
            Err(_) => {
                out.stop(format!(
                    "the capture reader failed after {} packets at byte {at}; the report covers \
                     what came before",
                    out.packets
                ));
                break;
            }
        };
        match next {
            Ok((offset, block)) => {
                stalls = 0;
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        let unit = if h.is_nanosecond_precision() { 1 } else { 1000 };
                        legacy = Some((h.network, unit));
                    }
                    PcapBlockOwned::Legacy(b) => {
                        let (linktype, unit) = legacy.unwrap_or((Linktype::ETHERNET, 1000));
                        let ts = u64::from(b.ts_sec) * 1_000_000_000
                            + (u64::from(b.ts_usec) * unit).min(999_999_999);
                        last_ts = ts;
                        let data = &b.data[..(b.caplen as usize).min(b.data.len())];
                        out.packets += 1;
                        on_frame(&Frame {
                            ts_ns: ts,
                            linktype,
                            data,
                        });
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        let resolution = match idb.ts_resolution() {
                            Some(r) if r > 0 => r,
                            _ => {
                                warn_once(
                                    &mut out.warnings,
                                    format!(
                                        "interface {} declares an invalid time resolution; \
                                         microseconds assumed",
                                        interfaces.len()
                                    ),
                                );
                                1_000_000
                            }
                        };
                        interfaces.push((idb.linktype, resolution, idb.ts_offset()));
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        match interfaces.get(epb.if_id as usize) {
                            Some(&(linktype, resolution, offset)) => {
                                let units = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                                let ns = u128::from(units) * 1_000_000_000 / u128::from(resolution);
                                let ns = u64::try_from(ns).unwrap_or(u64::MAX);
                                let ts =
                                    ns.saturating_add_signed(offset.saturating_mul(1_000_000_000));
                                last_ts = ts;
                                out.packets += 1;
                                on_frame(&Frame {
                                    ts_ns: ts,
                                    linktype,
                                    data: epb.packet_data(),
                                });
                            }
                            None => out.orphans += 1,
                        }
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => match interfaces.first() {
                        // No time stamp in a simple packet block: the last one seen.
                        Some(&(linktype, _, _)) => {
                            out.packets += 1;
                            on_frame(&Frame {
                                ts_ns: last_ts,
                                linktype,
                                data: spb.packet_data(),
                            });
                        }
                        None => out.orphans += 1,
                    },
                    // Statistics, name resolution, comments, secrets: nothing for us.
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(offset);
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                // More bytes are needed for the next block: read them (a pipe may hand
                // them over a few at a time). The reader says UnexpectedEof once the input
                // has none left; the stall counter only guards against one that neither
                // gives bytes nor says so.
                let before = reader.data().len();
                if reader.refill().is_err() {
                    out.stop(format!(
                        "reading the capture failed after {} packets at byte {at}; the report \
                         covers what came before",
                        out.packets
                    ));
                    break;
                }
                if reader.data().len() > before {
                    stalls = 0;
                } else {
                    stalls += 1;
                    if stalls > 64 {
                        out.stop(truncated(out.packets, at));
                        break;
                    }
                }
            }
            Err(PcapError::UnexpectedEof) => {
                out.stop(truncated(out.packets, at));
                break;
            }
            Err(PcapError::BufferTooSmall) => {
                let size = reader.data().len().max(BUFFER) * 2;
                if size > MAX_BLOCK || !reader.grow(size) || reader.refill().is_err() {
                    out.stop(format!(
                        "capture corrupt after {} packets at byte {at}: a block claims more than \
                         {} MiB; the report covers what came before",
                        out.packets,
                        MAX_BLOCK >> 20
                    ));
                    break;
                }
            }
            Err(PcapError::ReadError) => {
                out.stop(format!(
                    "reading the capture failed after {} packets at byte {at}; the report covers \
                     what came before",
                    out.packets
                ));
                break;
            }
            Err(e) => {
                out.stop(format!(
                    "capture corrupt after {} packets at byte {at} ({}); the report covers what \
                     came before",
                    out.packets,
                    describe(&e)
                ));
                break;
            }
        }
    }
    out.bytes = reader.consumed() as u64;
    if out.orphans > 0 {
        out.warnings.push(format!(
            "{} packets name an interface the capture never described; skipped",
            out.orphans
        ));
    }
    Ok(out)
}

impl Outcome {
    fn stop(&mut self, why: String) {
        self.warnings.push(why.clone());
        self.stopped = Some(why);
    }
}

fn truncated(packets: u64, at: u64) -> String {
    format!(
        "capture truncated after {packets} packets at byte {at}: the last block is cut short; \
         the report covers what came before"
    )
}

fn warn_once(warnings: &mut Vec<String>, w: String) {
    if !warnings.contains(&w) {
        warnings.push(w);
    }
}

fn describe<I>(e: &PcapError<I>) -> String {
    match e {
        PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
            format!("unreadable block: {}", kind.description())
        }
        PcapError::HeaderNotRecognized => "unrecognised header".into(),
        _ => "unreadable block".into(),
    }
}

/// The format from the first bytes, or a usage error saying what the file is not.
fn detect(head: &[u8], name: &str) -> anyhow::Result<Format> {
    let hint = "give a capture written by `tcpdump -w FILE` (pcap) or Wireshark (pcapng)";
    if head.is_empty() {
        return Err(usage(format!("{name} is empty: not a capture; {hint}")));
    }
    let Some(magic) = head.get(..4) else {
        return Err(usage(format!(
            "{name} is only {} bytes long: not a capture; {hint}",
            head.len()
        )));
    };
    let le = u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]);
    let be = u32::from_be_bytes([magic[0], magic[1], magic[2], magic[3]]);
    // Microsecond, nanosecond and "modified" pcap, in either byte order.
    const PCAP: [u32; 3] = [0xa1b2_c3d4, 0xa1b2_3c4d, 0xa1b2_cd34];
    if PCAP.contains(&le) || PCAP.contains(&be) {
        return Ok(Format::Pcap);
    }
    if le == 0x0a0d_0d0a {
        return Ok(Format::PcapNg);
    }
    let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let what = if head.starts_with(&[0x1f, 0x8b]) {
        " (gzip: decompress it first, e.g. `zcat FILE | synguard analyze -`)"
    } else if head.starts_with(b"\xfd7zXZ") {
        " (xz: decompress it first, e.g. `xzcat FILE | synguard analyze -`)"
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        " (zstd: decompress it first, e.g. `zstdcat FILE | synguard analyze -`)"
    } else if head.iter().take(64).all(|b| b.is_ascii()) {
        " (text)"
    } else {
        ""
    };
    Err(usage(format!(
        "{name} is not a pcap or pcapng capture: it starts with {}{what}; {hint}",
        shown.join(" ")
    )))
}

fn header_error(name: &str, len: usize, e: &PcapError<&[u8]>) -> anyhow::Error {
    match e {
        PcapError::Incomplete(_) | PcapError::UnexpectedEof | PcapError::Eof => usage(format!(
            "{name} ends inside its file header ({len} bytes): not a complete capture"
        )),
        other => usage(format!(
            "{name} has a corrupt file header ({}): not a capture that can be read",
            describe(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::UsageError;

    /// A little-endian microsecond pcap of `n` 60-byte Ethernet frames, one per ms.
    fn pcap(n: u32) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        f.extend_from_slice(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&65_535u32.to_le_bytes());
        f.extend_from_slice(&1u32.to_le_bytes());
        for i in 0..n {
            f.extend_from_slice(&1_700_000_000u32.to_le_bytes());
            f.extend_from_slice(&(i * 1000).to_le_bytes());
            f.extend_from_slice(&60u32.to_le_bytes());
            f.extend_from_slice(&60u32.to_le_bytes());
            f.extend_from_slice(&[0xab; 60]);
        }
        f
    }

    fn frames(bytes: &[u8]) -> anyhow::Result<(Outcome, Vec<u64>)> {
        let mut ts = Vec::new();
        let out = read(bytes, "test", |f| ts.push(f.ts_ns))?;
        Ok((out, ts))
    }

    fn usage_text(r: anyhow::Result<(Outcome, Vec<u64>)>) -> String {
        let e = r.expect_err("an error");
        assert!(e.is::<UsageError>(), "{e:#}");
        e.to_string()
    }

    #[test]
    fn whole_capture_in_order_with_times() {
        let (out, ts) = frames(&pcap(3)).expect("read");
        assert_eq!((out.format, out.packets, out.stopped), ("pcap", 3, None));
        let t0 = 1_700_000_000 * 1_000_000_000;
        assert_eq!(ts, [t0, t0 + 1_000_000, t0 + 2_000_000]);
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    }

    #[test]
    fn cut_short_keeps_what_came_before() {
        let full = pcap(3);
        // Inside the third record's data, then inside its header.
        for cut in [full.len() - 10, 24 + 2 * 76 + 5] {
            let (out, ts) = frames(&full[..cut]).expect("read");
            assert_eq!(ts.len(), 2);
            let why = out.stopped.expect("stopped");
            assert!(why.contains("truncated after 2 packets"), "{why}");
            assert!(out.warnings.contains(&why));
        }
    }

    #[test]
    fn not_captures() {
        assert!(usage_text(frames(b"")).contains("is empty"));
        assert!(usage_text(frames(b"ab")).contains("only 2 bytes"));
        assert!(usage_text(frames(b"hello world")).contains("(text)"));
        assert!(usage_text(frames(b"\x1f\x8b\x08\x00")).contains("zcat FILE | synguard"));
        assert!(usage_text(frames(&pcap(0)[..20])).contains("ends inside its file header"));
    }

    #[test]
    fn a_reader_that_hands_over_one_byte_at_a_time() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let Some((&b, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                match buf.first_mut() {
                    Some(x) => *x = b,
                    None => return Ok(0),
                }
                self.0 = rest;
                Ok(1)
            }
        }
        let bytes = pcap(5000);
        let mut n = 0;
        let out = read(Trickle(&bytes), "pipe", |_| n += 1).expect("read");
        assert_eq!((n, out.packets, out.stopped), (5000, 5000, None));
    }
}
