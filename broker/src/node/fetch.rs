//! Fetch: reading committed batches through the queue index, and long polls that
//! wait for data to commit.

use std::time::{Duration, Instant};

use raftmq_proto::pb::{self, ErrorCode};

use super::requests::group_error;
use super::{FetchWaiter, Node, FETCH_MAX_BATCHES};
use crate::command;
use crate::raft::Role;
use crate::response::Responder;

impl Node {
    /// Answers a fetch now, or parks it until data commits or its wait ends.
    pub(super) fn fetch(&mut self, req: pb::FetchRequest, reply: Responder) {
        // The coordinator runs on the metadata group's leader: a data group cannot
        // check the member, and a fetch changes nothing (commits are fenced there).
        if !req.group.is_empty() && self.group_id() == crate::directory::METADATA_GROUP {
            if self.raft.role() != Role::Leader {
                return reply.error(self.not_leader());
            }
            let queue = [(req.topic.clone(), req.queue)];
            if let Err(e) =
                self.groups
                    .check_owner(&req.group, &req.member_id, req.generation, &queue)
            {
                return reply.error(group_error(e));
            }
        }
        match self.try_fetch(&req, false) {
            Ok(Some(response)) => reply.ok(pb::response::Body::Fetch(response)),
            Ok(None) => {
                let topic_id = self.state.topic(&req.topic).map_or(0, |t| t.id);
                let wait = u64::from(req.max_wait_ms).min(self.config.max_fetch_wait_ms);
                let deadline = Instant::now() + Duration::from_millis(wait);
                self.fetch_deadlines
                    .push_back((deadline, topic_id, req.queue));
                self.fetch_waiters
                    .entry((topic_id, req.queue))
                    .or_default()
                    .push(FetchWaiter {
                        request: req,
                        reply,
                        deadline,
                    });
            }
            Err(e) => reply.error(e),
        }
    }

    /// `Ok(None)`: not enough data yet and the request may wait.
    pub(super) fn try_fetch(
        &self,
        req: &pb::FetchRequest,
        final_attempt: bool,
    ) -> Result<Option<pb::FetchResponse>, pb::Error> {
        let queue = self.queue(&req.topic, req.queue)?;
        if req.offset < queue.start_offset || req.offset > queue.next_offset {
            return Err(pb::Error {
                code: ErrorCode::OffsetOutOfRange as i32,
                message: format!(
                    "offset {} is outside [{}, {}] of {}/{}",
                    req.offset, queue.start_offset, queue.next_offset, req.topic, req.queue
                ),
                log_start: queue.start_offset,
                log_end: queue.next_offset,
                ..pb::Error::default()
            });
        }
        let max_bytes = (req.max_bytes as usize).max(1);
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        for slot in queue.slots_from(req.offset).iter().take(FETCH_MAX_BATCHES) {
            if !batches.is_empty() && bytes + slot.bytes as usize > max_bytes {
                break;
            }
            let entry = self.raft.log().entry(slot.entry_index).map_err(|e| {
                tracing::error!(index = slot.entry_index.0, error = %e, "committed entry unreadable");
                pb::Error::new(ErrorCode::StorageError, e.to_string())
            })?;
            let messages = command::decode_messages(&entry.body)
                .map_err(|e| pb::Error::new(ErrorCode::StorageError, e.to_string()))?;
            bytes += messages.batch.len();
            batches.push(pb::FetchedBatch {
                base_offset: slot.base_offset,
                batch: messages.batch,
            });
        }
        let enough = bytes >= (req.min_bytes as usize).max(1);
        if !enough && !final_attempt && req.max_wait_ms > 0 {
            return Ok(None);
        }
        Ok(Some(pb::FetchResponse {
            batches,
            high_watermark: queue.next_offset,
            log_start: queue.start_offset,
        }))
    }

    pub(super) fn wake_fetchers(&mut self, topic_id: u32, queue: u32) {
        let Some(waiters) = self.fetch_waiters.remove(&(topic_id, queue)) else {
            return;
        };
        let mut still = Vec::new();
        for waiter in waiters {
            if waiter.reply.is_closed() {
                // Its caller stopped waiting (a multi-queue fetch answered by
                // another queue): nothing to read for it.
                continue;
            }
            match self.try_fetch(&waiter.request, false) {
                Ok(Some(response)) => waiter.reply.ok(pb::response::Body::Fetch(response)),
                Ok(None) => still.push(waiter),
                Err(e) => waiter.reply.error(e),
            }
        }
        if !still.is_empty() {
            self.fetch_waiters.insert((topic_id, queue), still);
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, topic_id, queue)) = self.fetch_deadlines.front() {
            if deadline > now {
                break;
            }
            self.fetch_deadlines.pop_front();
            let Some(waiters) = self.fetch_waiters.remove(&(topic_id, queue)) else {
                continue;
            };
            let (due, keep): (Vec<_>, Vec<_>) =
                waiters.into_iter().partition(|w| w.deadline <= now);
            for waiter in due {
                if waiter.reply.is_closed() {
                    continue;
                }
                match self.try_fetch(&waiter.request, true) {
                    Ok(Some(response)) => waiter.reply.ok(pb::response::Body::Fetch(response)),
                    Ok(None) => unreachable!("a final attempt always answers"),
                    Err(e) => waiter.reply.error(e),
                }
            }
            if !keep.is_empty() {
                self.fetch_waiters.insert((topic_id, queue), keep);
            }
        }
        // Proposals are indexed in the order they were made, so their deadlines are too.
        while let Some(entry) = self.pending.first_entry() {
            if entry.get().deadline > now {
                break;
            }
            let pending = entry.remove();
            pending.reply.error(pb::Error::new(
                ErrorCode::Timeout,
                "not committed in time; retry (idempotent producers are deduplicated)",
            ));
        }
    }
}
