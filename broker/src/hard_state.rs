//! The Raft hard state on disk: term, vote and the highest acknowledged index.
//!
//! Written often (the acknowledged index rises with every group commit), so it is
//! not rewritten with temp-file-and-rename: the file holds two fixed slots, written
//! alternately in place and synced, as a database superblock is. A torn write can
//! only damage the slot being written; the other still holds the previous state, and
//! the reader takes the valid slot with the higher sequence number.
//!
//! ## Slot layout (64 bytes, little-endian; slot `n` at byte `64 × (n mod 2)`)
//!
//! | offset | size | field       | notes |
//! |-------:|-----:|-------------|-------|
//! | 0      | 4    | magic       | `b"RMHS"` |
//! | 4      | 4    | version     | `1` |
//! | 8      | 8    | sequence    | increases by one per write |
//! | 16     | 8    | node_id     | the node this data dir belongs to |
//! | 24     | 8    | term        | |
//! | 32     | 8    | vote        | `0` = none |
//! | 40     | 8    | acked_index | |
//! | 48     | 12   | reserved    | zero |
//! | 60     | 4    | crc         | CRC32 of bytes `[0, 60)` |

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use raftmq_store::durability;
use raftmq_store::{LogIndex, Term};

use crate::raft::{HardState, NodeId};

const SLOT_BYTES: usize = 64;
const MAGIC: &[u8; 4] = b"RMHS";
const VERSION: u32 = 1;
const FILE_NAME: &str = "hardstate";

/// Why the hard state could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum HardStateError {
    /// Reading or writing the file failed.
    #[error("cannot {op} the hard state {}: {error}", path.display())]
    Io {
        /// What was being done (`open`, `read`, `write`).
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// The file exists but neither slot is valid.
    #[error(
        "hard state file {0} is corrupt in both slots: this node cannot recover its Raft \
         term and vote; restore the file from a backup, or remove the node \
         (`raftmq cluster remove-node ID`), empty its data directory and start it with \
         --join to add it again"
    )]
    Corrupt(String),
    /// Syncing the file or its directory failed.
    #[error(transparent)]
    Sync(#[from] raftmq_store::StoreError),
    /// The data directory was written by another node.
    #[error("data dir belongs to node {found}, not node {expected}")]
    WrongNode {
        /// Id in the config.
        expected: u64,
        /// Id found on disk.
        found: u64,
    },
}

/// The open hard-state file.
#[derive(Debug)]
pub struct HardStateFile {
    file: File,
    path: std::path::PathBuf,
    sequence: u64,
    node_id: NodeId,
}

fn encode(sequence: u64, node_id: NodeId, hs: &HardState) -> [u8; SLOT_BYTES] {
    let mut slot = [0u8; SLOT_BYTES];
    slot[0..4].copy_from_slice(MAGIC);
    slot[4..8].copy_from_slice(&VERSION.to_le_bytes());
    slot[8..16].copy_from_slice(&sequence.to_le_bytes());
    slot[16..24].copy_from_slice(&node_id.0.to_le_bytes());
    slot[24..32].copy_from_slice(&hs.term.0.to_le_bytes());
    slot[32..40].copy_from_slice(&hs.vote.map_or(0, |v| v.0).to_le_bytes());
    slot[40..48].copy_from_slice(&hs.acked_index.0.to_le_bytes());
    let crc = crc32fast::hash(&slot[..60]);
    slot[60..64].copy_from_slice(&crc.to_le_bytes());
    slot
}

fn u64_at(slot: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(slot[at..at + 8].try_into().expect("8 bytes"))
}

fn decode(slot: &[u8]) -> Option<(u64, NodeId, HardState)> {
    if slot.len() != SLOT_BYTES || &slot[0..4] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(slot[60..64].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&slot[..60]) {
        return None;
    }
    if u32::from_le_bytes(slot[4..8].try_into().expect("4 bytes")) != VERSION {
        return None;
    }
    let vote = u64_at(slot, 32);
    Some((
        u64_at(slot, 8),
        NodeId(u64_at(slot, 16)),
        HardState {
            term: Term(u64_at(slot, 24)),
            vote: (vote != 0).then_some(NodeId(vote)),
            acked_index: LogIndex(u64_at(slot, 40)),
        },
    ))
}

impl HardStateFile {
    /// Opens (or creates) the file in `dir` and returns the last stored state.
    pub fn open(dir: &Path, node_id: NodeId) -> Result<(HardStateFile, HardState), HardStateError> {
        let path = dir.join(FILE_NAME);
        let io = |op, error| HardStateError::Io {
            op,
            path: path.clone(),
            error,
        };
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("open", e))?;
        if !existed {
            durability::sync_dir(dir)?;
        }
        let mut buf = [0u8; 2 * SLOT_BYTES];
        let len = file.metadata().map_err(|e| io("read", e))?.len() as usize;
        let read = len.min(buf.len());
        file.read_exact_at(&mut buf[..read], 0)
            .map_err(|e| io("read", e))?;
        let best = buf
            .chunks(SLOT_BYTES)
            .filter_map(decode)
            .max_by_key(|(sequence, _, _)| *sequence);
        let (sequence, hard_state) = match best {
            Some((sequence, found, hs)) => {
                if found != node_id {
                    return Err(HardStateError::WrongNode {
                        expected: node_id.0,
                        found: found.0,
                    });
                }
                (sequence, hs)
            }
            None if len == 0 => (0, HardState::default()),
            None => return Err(HardStateError::Corrupt(path.display().to_string())),
        };
        let mut this = HardStateFile {
            file,
            path,
            sequence,
            node_id,
        };
        if len == 0 {
            // Claim the directory for this node at once.
            this.store(&hard_state)?;
        }
        Ok((this, hard_state))
    }

    /// Writes `hs` durably (in place, into the older slot, then fdatasync).
    pub fn store(&mut self, hs: &HardState) -> Result<(), HardStateError> {
        let sequence = self.sequence + 1;
        let slot = encode(sequence, self.node_id, hs);
        let at = (sequence % 2) * SLOT_BYTES as u64;
        self.file
            .write_all_at(&slot, at)
            .map_err(|error| HardStateError::Io {
                op: "write",
                path: self.path.clone(),
                error,
            })?;
        durability::sync_data(&self.file, &self.path)?;
        self.sequence = sequence;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(term: u64, vote: Option<u64>, acked: u64) -> HardState {
        HardState {
            term: Term(term),
            vote: vote.map(NodeId),
            acked_index: LogIndex(acked),
        }
    }

    #[test]
    fn the_latest_stored_state_is_loaded_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, first) = HardStateFile::open(dir.path(), NodeId(2)).unwrap();
        assert_eq!(first, HardState::default());
        for i in 1..=5 {
            file.store(&hs(i, Some(2), i * 10)).unwrap();
        }
        drop(file);
        let (_, loaded) = HardStateFile::open(dir.path(), NodeId(2)).unwrap();
        assert_eq!(loaded, hs(5, Some(2), 50));
    }

    #[test]
    fn a_torn_newest_slot_falls_back_to_the_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let (mut file, _) = HardStateFile::open(dir.path(), NodeId(1)).unwrap();
        file.store(&hs(3, None, 7)).unwrap();
        file.store(&hs(4, Some(1), 9)).unwrap();
        let newest_at = (file.sequence % 2) * SLOT_BYTES as u64;
        drop(file);
        let raw = File::options()
            .write(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        raw.write_all_at(&[0xFF; 8], newest_at + 24).unwrap();
        let (_, loaded) = HardStateFile::open(dir.path(), NodeId(1)).unwrap();
        assert_eq!(loaded, hs(3, None, 7));
    }

    #[test]
    fn a_data_dir_of_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(HardStateFile::open(dir.path(), NodeId(1)).unwrap());
        assert!(matches!(
            HardStateFile::open(dir.path(), NodeId(2)),
            Err(HardStateError::WrongNode {
                expected: 2,
                found: 1
            })
        ));
    }
}
