//! One generator task's stream of items as its owner sees them, as plain state:
//! `GeneratorStream` keeps the items in index order for the consumer (`next`), ignores
//! items a retried attempt reports again, and says when the producer may go on
//! (backpressure: the owner's answer to a report waits while the consumer is that many
//! items behind). `GeneratorStreams` holds this process's streams; `generator.rs` wires
//! them to the object table and the task's worker.

use std::collections::HashMap;

use parking_lot::Mutex;
use rtd_common::proto::TaskSpec;
use rtd_common::{ObjectId, TaskId};
use tokio::sync::watch;

/// What the consumer of a stream gets next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeneratorNext {
    /// The next item's object.
    Item(ObjectId),
    /// The task failed (an exception, a crash, a cancel) after the items so far: its
    /// completed ref, whose value is the error, comes once as the last item.
    Failed(ObjectId),
    /// Not yet produced.
    Pending,
    /// Every item was taken and the task is done.
    End,
}

/// Whether a report brought a new item.
#[derive(Debug, PartialEq, Eq)]
pub enum Reported {
    New,
    /// Reported before (a retried or re-run attempt yields the same items again).
    Duplicate,
}

/// One generator task's items as its owner sees them (see the module doc).
#[derive(Debug, Default)]
pub struct GeneratorStream {
    /// Item objects by index; `None` where a later item arrived first.
    items: Vec<Option<ObjectId>>,
    /// How many items the consumer has taken.
    consumed: usize,
    /// Unconsumed items at which the producer waits (0: never).
    backpressure: usize,
    /// The task is done (its completed ref is ready).
    finished: bool,
    /// It failed: the completed ref still to hand out, then taken.
    failure: Option<ObjectId>,
    failure_taken: bool,
}

impl GeneratorStream {
    pub fn new(backpressure: usize) -> Self {
        Self { backpressure, ..Default::default() }
    }

    /// Records item `index`.
    pub fn report(&mut self, index: usize, id: ObjectId) -> Reported {
        if self.items.len() <= index {
            self.items.resize(index + 1, None);
        }
        match &mut self.items[index] {
            Some(_) => Reported::Duplicate,
            slot => {
                *slot = Some(id);
                Reported::New
            }
        }
    }

    /// Whether the producer may go on after reporting item `index`: once fewer than
    /// `backpressure` items, it included, are unconsumed (or the stream is over).
    pub fn may_continue(&self, index: usize) -> bool {
        self.backpressure == 0 || self.finished || index + 1 < self.consumed + self.backpressure
    }

    /// What the consumer would get now, without taking it.
    pub fn peek(&self) -> GeneratorNext {
        match self.items.get(self.consumed) {
            Some(Some(id)) => GeneratorNext::Item(*id),
            // The worker's reports all arrive before its reply, so a gap at the end is
            // filled by then; wait for it rather than skip it.
            Some(None) => GeneratorNext::Pending,
            None if !self.finished => GeneratorNext::Pending,
            None => match self.failure {
                Some(id) if !self.failure_taken => GeneratorNext::Failed(id),
                _ => GeneratorNext::End,
            },
        }
    }

    /// Takes what `peek` says.
    pub fn take(&mut self) -> GeneratorNext {
        let next = self.peek();
        match next {
            GeneratorNext::Item(_) => self.consumed += 1,
            GeneratorNext::Failed(_) => self.failure_taken = true,
            GeneratorNext::Pending | GeneratorNext::End => {}
        }
        next
    }

    /// The task is done; `failure` is its completed ref when it failed.
    pub fn finish(&mut self, failure: Option<ObjectId>) {
        self.finished = true;
        self.failure = failure;
    }

    /// The consumer took everything there is.
    pub fn is_finished(&self) -> bool {
        self.peek() == GeneratorNext::End
    }

    /// Items never taken (released when the consumer drops the generator).
    pub fn unconsumed(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.items.iter().skip(self.consumed).flatten().copied()
    }
}

pub(crate) struct Stream {
    pub(crate) state: GeneratorStream,
    /// How to rebuild its items (lineage): the task that made them.
    pub(crate) spec: TaskSpec,
    /// Bumped on every change, for waiting consumers and held reports.
    pub(crate) changed: watch::Sender<()>,
    /// `num_returns="dynamic"`: no consumer; the items stay held until the task is
    /// done, when the completed ref's value (the list of items) holds them instead.
    pub(crate) dynamic: bool,
}

/// The generator streams this process owns, by task (kept in `Context`; `generator.rs`
/// drives them).
#[derive(Default)]
pub struct GeneratorStreams {
    pub(crate) streams: Mutex<HashMap<TaskId, Stream>>,
}

impl GeneratorStreams {
    /// Whether the stream has no more items (or is gone).
    pub fn is_finished(&self, task_id: TaskId) -> bool {
        self.streams.lock().get(&task_id).is_none_or(|s| s.state.is_finished())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(task: &TaskId, index: u32) -> ObjectId {
        ObjectId::for_return(task, index + 1)
    }

    #[test]
    fn items_come_out_in_index_order_even_when_reported_out_of_order() {
        let task = TaskId::random();
        let mut s = GeneratorStream::new(0);
        assert_eq!(s.report(1, item(&task, 1)), Reported::New);
        assert_eq!(s.take(), GeneratorNext::Pending, "item 0 is not there yet");
        assert_eq!(s.report(0, item(&task, 0)), Reported::New);
        assert_eq!(s.take(), GeneratorNext::Item(item(&task, 0)));
        assert_eq!(s.take(), GeneratorNext::Item(item(&task, 1)));
        assert_eq!(s.take(), GeneratorNext::Pending, "the task may yield more");
        s.finish(None);
        assert_eq!(s.take(), GeneratorNext::End);
        assert!(s.is_finished());
    }

    #[test]
    fn a_retried_attempt_reporting_the_same_items_adds_nothing() {
        let task = TaskId::random();
        let mut s = GeneratorStream::new(0);
        s.report(0, item(&task, 0));
        s.report(1, item(&task, 1));
        assert_eq!(s.take(), GeneratorNext::Item(item(&task, 0)));
        // The worker died; the retry yields items 0, 1 and then 2.
        assert_eq!(s.report(0, item(&task, 0)), Reported::Duplicate);
        assert_eq!(s.report(1, item(&task, 1)), Reported::Duplicate);
        assert_eq!(s.report(2, item(&task, 2)), Reported::New);
        s.finish(None);
        let rest: Vec<_> = std::iter::from_fn(|| match s.take() {
            GeneratorNext::Item(id) => Some(id),
            _ => None,
        })
        .collect();
        assert_eq!(rest, vec![item(&task, 1), item(&task, 2)]);
    }

    #[test]
    fn backpressure_holds_the_producer_while_that_many_items_are_unconsumed() {
        let task = TaskId::random();
        let mut s = GeneratorStream::new(2);
        s.report(0, item(&task, 0));
        assert!(s.may_continue(0), "one unconsumed item of two allowed");
        s.report(1, item(&task, 1));
        assert!(!s.may_continue(1), "two unconsumed: the producer waits");
        s.take();
        assert!(s.may_continue(1), "the consumer took one");
        s.report(2, item(&task, 2));
        assert!(!s.may_continue(2));
        s.finish(None);
        assert!(s.may_continue(2), "a finished stream holds nobody");
        assert!(GeneratorStream::new(0).may_continue(1_000), "0 means no backpressure");
    }

    #[test]
    fn a_failed_task_ends_the_stream_with_its_error_once_after_the_items() {
        let task = TaskId::random();
        let completed = ObjectId::for_return(&task, 0);
        let mut s = GeneratorStream::new(0);
        s.report(0, item(&task, 0));
        s.finish(Some(completed));
        assert!(!s.is_finished());
        assert_eq!(s.take(), GeneratorNext::Item(item(&task, 0)), "earlier items stay readable");
        assert_eq!(s.take(), GeneratorNext::Failed(completed));
        assert_eq!(s.take(), GeneratorNext::End);
        assert!(s.is_finished());
    }

    #[test]
    fn unconsumed_items_are_those_after_the_consumer() {
        let task = TaskId::random();
        let mut s = GeneratorStream::new(0);
        for i in 0..3 {
            s.report(i as usize, item(&task, i));
        }
        s.take();
        assert_eq!(s.unconsumed().collect::<Vec<_>>(), vec![item(&task, 1), item(&task, 2)]);
    }
}
