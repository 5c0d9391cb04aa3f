//! Checking the CRC32 trailers of many consecutive events in one pass.
//!
//! A binlog event with checksums ends with the CRC32 (the zlib polynomial) of everything
//! before it. Checking each event on its own costs a hash call per event, and at a hundred bytes
//! per event the CRC code never reaches its wide, carry-less-multiply loop: that was half of
//! the time to read a binlog. This module checks a run of events with one CRC over the run.
//!
//! Why that works: the CRC of a message followed by its own CRC (little-endian) is a constant,
//! [`RESIDUE`], and CRC32 is linear. After a valid event the hash state is therefore always the
//! same, and XOR-ing that state's difference from a fresh start into the next 4 bytes makes the
//! next event hash as if it were alone. So with [`RESIDUE`] XOR-ed into the first 4 bytes of
//! every event but the first, the CRC of the whole run is [`RESIDUE`] exactly when every event
//! in it is valid (as with any CRC, two errors can cancel with a chance of 2^-32). The bytes
//! are restored before returning. When a run does not check out, the reader checks its events
//! one at a time to name the one at fault.
//!
//! A format description is never part of a run: the server flips its in-use flag without
//! updating its checksum, so it is checked on its own, and a relay log may change the checksum
//! algorithm after one.

use super::event::{FORMAT_DESCRIPTION_EVENT, Header};

/// The CRC32 of any message followed by its own little-endian CRC32.
pub const RESIDUE: u32 = 0x2144_df1c;

/// Measures the run of complete, checksummed events at the start of `window`, and checks
/// their CRC32 trailers: returns its length and whether every event in it is intact. The run
/// stops before an event that is incomplete in `window`, shorter than `minimum` (the reader
/// reports that event when it gets there) or a format description; it is empty (and not
/// intact) when the first event is one of those. `fresh` is a new hasher, cloned rather than made
/// here: making one detects the CPU's features. `starts` is scratch space, kept by the caller
/// so that it is allocated once. `window` is modified while hashing and restored before
/// returning.
pub fn check_run(
    fresh: &crc32fast::Hasher,
    window: &mut [u8],
    minimum: usize,
    starts: &mut Vec<usize>,
) -> (usize, bool) {
    // One walk measures the run and masks it; restoring it from the recorded starts does not
    // have to follow the chain of lengths again.
    starts.clear();
    let mut position = 0;
    while let Some(length) = next_in_run(window, position, minimum) {
        if position > 0 {
            xor_residue(window, position);
            starts.push(position);
        }
        position += length;
    }
    if position == 0 {
        return (0, false);
    }
    let mut hasher = fresh.clone();
    hasher.update(&window[..position]);
    for &start in starts.iter() {
        xor_residue(window, start);
    }
    (position, hasher.finalize() == RESIDUE)
}

/// The length of the event at `position` if it continues the run.
#[inline(always)]
fn next_in_run(window: &[u8], position: usize, minimum: usize) -> Option<usize> {
    let header = Header::decode(&window[position..])?;
    let length = header.length as usize;
    let continues = length >= minimum
        && length <= window.len() - position
        && header.event_type != FORMAT_DESCRIPTION_EVENT;
    continues.then_some(length)
}

/// XORs the residue into the 4 bytes at `at`, the start of an event (so at least a header
/// long), as one little-endian word: this runs twice per event.
#[inline(always)]
fn xor_residue(window: &mut [u8], at: usize) {
    if let Some(word) = window
        .get_mut(at..at + 4)
        .and_then(|bytes| <&mut [u8; 4]>::try_from(bytes).ok())
    {
        *word = (u32::from_le_bytes(*word) ^ RESIDUE).to_le_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binlog::event::HEADER_LEN;

    const MINIMUM: usize = HEADER_LEN + 4;
    /// Offsets of the event type and length in the header.
    const TYPE_OFFSET: usize = 4;
    const LENGTH_OFFSET: usize = 9;

    /// An event of `length` bytes of `event_type`, its body filled from `seed`, with a valid
    /// CRC32 trailer.
    fn event(event_type: u8, length: usize, seed: u8) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..length - 4)
            .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
            .collect();
        bytes[TYPE_OFFSET] = event_type;
        bytes[LENGTH_OFFSET..LENGTH_OFFSET + 4].copy_from_slice(&(length as u32).to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn check(window: &mut [u8]) -> (usize, bool) {
        check_run(&crc32fast::Hasher::new(), window, MINIMUM, &mut Vec::new())
    }

    fn run_of(lengths: &[usize]) -> Vec<u8> {
        lengths
            .iter()
            .enumerate()
            .flat_map(|(i, &length)| event(30, length, i as u8))
            .collect()
    }

    #[test]
    fn the_residue_is_the_crc_of_a_message_and_its_crc() {
        for message in [&b""[..], b"a", b"binlog event bytes"] {
            let mut bytes = message.to_vec();
            bytes.extend_from_slice(&crc32fast::hash(message).to_le_bytes());
            assert_eq!(crc32fast::hash(&bytes), RESIDUE);
        }
    }

    #[test]
    fn a_run_stops_where_the_run_cannot_go_on() {
        let three = run_of(&[23, 100, 40]);
        let with_fde: Vec<u8> = [event(30, 50, 1), event(FORMAT_DESCRIPTION_EVENT, 60, 2)].concat();
        let mut short_length = run_of(&[30, 30]);
        short_length[30 + LENGTH_OFFSET] = 5;
        let cases: [(&str, &[u8], usize); 7] = [
            ("empty", &[], 0),
            ("less than a header", &three[..10], 0),
            ("three whole events", &three, 163),
            ("the last one incomplete", &three[..162], 123),
            ("a format description", &with_fde, 50),
            ("starts with a format description", &with_fde[50..], 0),
            ("a length below the minimum", &short_length, 30),
        ];
        for (name, window, expected) in cases {
            let mut window = window.to_vec();
            assert_eq!(check(&mut window).0, expected, "{name}");
        }
    }

    #[test]
    fn a_run_is_intact_only_when_every_event_is() {
        let lengths = [23, 104, 19 + 4 + 200, 64, 23, 5000, 31];
        let intact = run_of(&lengths);
        let mut run = intact.clone();
        assert_eq!(check(&mut run), (intact.len(), true));
        assert_eq!(run, intact, "the run is restored");

        // One flipped bit anywhere (header, body, trailer; first, middle and last events).
        for position in [0, 3, 9, 22, 23, 24, 100, 127, 300, 3000, intact.len() - 1] {
            let mut damaged = intact.clone();
            damaged[position] ^= 0x10;
            let before = damaged.clone();
            let (_, intact) = check(&mut damaged);
            assert!(!intact, "bit flipped at {position}");
            assert_eq!(damaged, before, "the damaged run is restored too");
        }

        // Two events swapped are each still valid.
        let swapped = [event(30, 40, 7), event(30, 23, 8)].concat();
        let mut run = swapped.clone();
        assert_eq!(check(&mut run), (63, true));
    }

    #[test]
    fn a_single_event_is_checked_like_any_other() {
        let mut one = event(30, 77, 3);
        assert_eq!(check(&mut one), (77, true));
        one[40] ^= 1;
        assert_eq!(check(&mut one), (77, false));
        assert_eq!(
            check(&mut event(FORMAT_DESCRIPTION_EVENT, 77, 3)),
            (0, false)
        );
    }
}
