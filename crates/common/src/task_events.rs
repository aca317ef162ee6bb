//! The words of task events (Ray's): the names of task states, task types, error
//! types and actor states as the state API, the dashboard, the timeline and the
//! metrics show them.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::object_kind;
use crate::proto::{ActorState, TaskStatus, TaskType};

/// A task state's name as Ray's state API spells it.
pub fn status_name(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::TaskPendingArgsAvail => "PENDING_ARGS_AVAIL",
        TaskStatus::TaskPendingNodeAssignment => "PENDING_NODE_ASSIGNMENT",
        TaskStatus::TaskSubmittedToWorker => "SUBMITTED_TO_WORKER",
        TaskStatus::TaskRunning => "RUNNING",
        TaskStatus::TaskFinished => "FINISHED",
        TaskStatus::TaskFailed => "FAILED",
    }
}

/// Every state name, in the order a task goes through them.
pub const STATUS_NAMES: [&str; 6] =
    ["PENDING_ARGS_AVAIL", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", "RUNNING", "FINISHED", "FAILED"];

/// An actor state's name as Ray's state API spells it.
pub fn actor_state_name(state: ActorState) -> &'static str {
    match state {
        ActorState::Pending => "PENDING_CREATION",
        ActorState::Alive => "ALIVE",
        ActorState::Restarting => "RESTARTING",
        ActorState::Dead => "DEAD",
    }
}

pub fn type_name(task_type: TaskType) -> &'static str {
    match task_type {
        TaskType::NormalTask => "NORMAL_TASK",
        TaskType::ActorCreationTask => "ACTOR_CREATION_TASK",
        TaskType::ActorTask => "ACTOR_TASK",
    }
}

/// Whether a task in `status` is done (its attempt will change no more).
pub fn is_terminal(status: TaskStatus) -> bool {
    matches!(status, TaskStatus::TaskFinished | TaskStatus::TaskFailed)
}

/// Ray's error type name for a system error stored as `kind` (see `object_kind`).
pub fn error_type_of_kind(kind: u32) -> &'static str {
    match kind {
        object_kind::WORKER_CRASHED => "WORKER_DIED",
        object_kind::TASK_CANCELLED => "TASK_CANCELLED",
        object_kind::OBJECT_LOST => "OBJECT_LOST",
        object_kind::ACTOR_DIED => "ACTOR_DIED",
        object_kind::UNSCHEDULABLE => "TASK_UNSCHEDULABLE_ERROR",
        object_kind::RUNTIME_ENV_SETUP_FAILED => "RUNTIME_ENV_SETUP_FAILED",
        _ => "TASK_EXECUTION_EXCEPTION",
    }
}

/// Nanoseconds since the Unix epoch, as task events carry time.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_its_ray_name_in_order() {
        let all = [
            TaskStatus::TaskPendingArgsAvail,
            TaskStatus::TaskPendingNodeAssignment,
            TaskStatus::TaskSubmittedToWorker,
            TaskStatus::TaskRunning,
            TaskStatus::TaskFinished,
            TaskStatus::TaskFailed,
        ];
        let names: Vec<&str> = all.iter().map(|s| status_name(*s)).collect();
        assert_eq!(names, STATUS_NAMES);
        assert_eq!(all.iter().filter(|s| is_terminal(**s)).count(), 2);
    }
}
