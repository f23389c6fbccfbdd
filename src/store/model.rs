//! The records the store writes and the rows it reads back. Times are microseconds since the
//! Unix epoch, supplied by the caller: the store never reads the clock.

use std::borrow::Cow;

/// Run states that mean "not finished": such runs are resumable and never pruned.
pub const UNFINISHED_RUN_STATES: [&str; 4] = ["pending", "scheduled", "running", "retrying"];

/// Task statuses after which a task is done; [`Store::task_status`](super::Store::task_status)
/// sets `ended_us` for these and clears it for the others.
pub const TERMINAL_TASK_STATUSES: [&str; 5] =
    ["completed", "failed", "cancelled", "canceled", "skipped"];

/// The immutable facts of one task of a run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskFact {
    /// The task's index in the run's graph.
    pub node: u32,
    /// The task's name, unique within the run.
    pub name: String,
    /// A stable key of the task's definition (for caching).
    pub task_key: Option<String>,
    /// A digest of the task's inputs.
    pub inputs_digest: Option<String>,
    /// The random seed the task ran with.
    pub seed: Option<i64>,
    /// The version of the task's code.
    pub code_version: Option<String>,
}

/// A new run with its tasks, as written by [`Store::begin_run`](super::Store::begin_run). Every task
/// starts in status `pending` at attempt 0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunRecord {
    /// Unique id of the run.
    pub run_id: String,
    /// Name of the graph it runs.
    pub graph: String,
    /// Initial state, usually `running` or `pending`.
    pub state: String,
    /// What started it: `manual`, `schedule`, `resume`, ...
    pub trigger: String,
    /// The logical time the run is for (a cron fire time), if any.
    pub scheduled_us: Option<i64>,
    /// When the run was created.
    pub created_us: i64,
    /// When it started running, if it has.
    pub started_us: Option<i64>,
    /// A JSON snapshot of the graph's config.
    pub config_json: Option<String>,
    /// Free-form JSON metadata.
    pub meta_json: Option<String>,
    /// The run's tasks.
    pub tasks: Vec<TaskFact>,
}

/// A task attempt's error.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorInfo {
    /// The exception's type name (`ValueError`).
    pub type_name: String,
    /// The exception's message.
    pub message: String,
    /// The formatted traceback, if any.
    pub traceback: Option<String>,
}

/// One task transition of a run, for [`Store::transitions`](super::Store::transitions): the same
/// meaning as the verbs `task_started`, `task_ended` and `task_status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Attempt `attempt` (1-based) of `node` started.
    Started { node: u32, attempt: u32, at_us: i64 },
    /// An attempt ended with `status`; with `retry_at_us`, another attempt follows.
    Ended {
        node: u32,
        attempt: u32,
        at_us: i64,
        status: Cow<'static, str>,
        error: Option<Box<ErrorInfo>>,
        retry_at_us: Option<i64>,
    },
    /// A status set without an attempt (`skipped`, `cancelled`, `pending` on resume).
    Status {
        node: u32,
        status: Cow<'static, str>,
        at_us: i64,
    },
}

/// A graph known to the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GraphRecord {
    /// The graph's unique name.
    pub name: String,
    /// Its cron schedule, if it is scheduled.
    pub schedule: Option<String>,
    /// The time zone of the schedule.
    pub tz: Option<String>,
    /// When it was first recorded (kept by later upserts).
    pub created_us: i64,
    /// When it was last recorded.
    pub updated_us: i64,
    /// The last fire time handled; an upsert with `None` keeps the stored one.
    pub last_fire_us: Option<i64>,
    /// Free-form JSON metadata.
    pub meta_json: Option<String>,
}

/// Which runs [`Store::list_runs`](super::Store::list_runs) returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunFilter {
    /// Only runs of this graph.
    pub graph: Option<String>,
    /// Only runs in this state.
    pub state: Option<String>,
    /// Only runs started by this trigger (`schedule`, `manual`, ...).
    pub trigger: Option<String>,
    /// Only runs older than this `(created_us, run_id)` in the listing's order: the last row of
    /// the previous page, so a page costs one index range scan whatever its depth.
    pub before: Option<(i64, String)>,
    /// At most this many (newest first); all if `None`.
    pub limit: Option<usize>,
}

/// One run, without its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunSummary {
    /// Unique id of the run.
    pub run_id: String,
    /// Name of the graph.
    pub graph: String,
    /// Current state.
    pub state: String,
    /// What started it.
    pub trigger: String,
    /// Logical time, if any.
    pub scheduled_us: Option<i64>,
    /// When it was created.
    pub created_us: i64,
    /// When it started.
    pub started_us: Option<i64>,
    /// When it ended.
    pub ended_us: Option<i64>,
}

/// One task of a run: its facts and its current state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskRow {
    /// The immutable facts.
    pub fact: TaskFact,
    /// Current status (`pending`, `running`, `retrying`, `completed`, ...).
    pub status: String,
    /// The latest attempt number (0 before the first start).
    pub attempt: u32,
    /// When the first attempt started.
    pub started_us: Option<i64>,
    /// When the task reached a terminal status.
    pub ended_us: Option<i64>,
    /// The latest attempt's error, if it failed.
    pub error: Option<ErrorInfo>,
}

/// A run with its config, metadata and tasks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunDetail {
    /// The run itself.
    pub run: RunSummary,
    /// The config snapshot.
    pub config_json: Option<String>,
    /// The metadata.
    pub meta_json: Option<String>,
    /// The tasks, by node.
    pub tasks: Vec<TaskRow>,
}

/// One attempt of one task.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttemptRow {
    /// The task's node.
    pub node: u32,
    /// The attempt number.
    pub attempt: u32,
    /// When it started.
    pub started_us: Option<i64>,
    /// When it ended.
    pub ended_us: Option<i64>,
    /// Its status (`running`, `completed`, `failed`, ...).
    pub status: String,
    /// Its error, if it failed.
    pub error: Option<ErrorInfo>,
    /// When the next attempt is due, if it will be retried.
    pub retry_at_us: Option<i64>,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogRow {
    /// The task's node (`None` for a run-level line).
    pub node: Option<u32>,
    /// The task's name.
    pub task: Option<String>,
    /// When it was logged.
    pub at_us: i64,
    /// Its level (`INFO`, ...).
    pub level: String,
    /// The text.
    pub message: String,
}

/// A scheduler event (missed fire, skipped fire, ...).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventRow {
    /// Increasing id.
    pub id: i64,
    /// The run it concerns, if any.
    pub run_id: Option<String>,
    /// When it happened.
    pub at_us: i64,
    /// What happened.
    pub kind: String,
    /// Details as JSON.
    pub detail_json: Option<String>,
}

/// A task of a run, by node index or by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRef<'a> {
    /// By node index.
    Node(u32),
    /// By task name.
    Name(&'a str),
}

impl From<u32> for TaskRef<'_> {
    fn from(node: u32) -> Self {
        TaskRef::Node(node)
    }
}

impl<'a> From<&'a str> for TaskRef<'a> {
    fn from(name: &'a str) -> Self {
        TaskRef::Name(name)
    }
}

/// A queued write: the unit the writer applies, batches and retries. Backend-neutral.
#[derive(Debug, Clone)]
pub(crate) enum Write {
    BeginRun(Box<RunRecord>),
    AddTasks {
        run_id: String,
        tasks: Vec<TaskFact>,
    },
    /// Task transitions of one run: one from each single-task verb, a delivery's worth from the
    /// engine's recorder.
    Transitions {
        run_id: String,
        items: Vec<Transition>,
    },
    SaveResult {
        run_id: String,
        node: u32,
        format: String,
        data: Vec<u8>,
    },
    AppendLog {
        run_id: String,
        node: Option<u32>,
        at_us: i64,
        level: String,
        message: String,
    },
    FinishRun {
        run_id: String,
        state: String,
        ended_us: i64,
    },
    SetRunState {
        run_id: String,
        state: String,
    },
    UpsertGraph(GraphRecord),
    RecordEvent {
        run_id: Option<String>,
        at_us: i64,
        kind: String,
        detail_json: Option<String>,
    },
    Prune {
        keep_runs: Option<usize>,
        keep_days: Option<u32>,
        now_us: i64,
    },
    /// Raw SQL on the write connection, for tests that provoke failures.
    #[cfg(test)]
    Raw(String),
}

impl Write {
    /// The verb's name, for error messages.
    pub(crate) fn op(&self) -> &'static str {
        match self {
            Write::BeginRun(_) => "begin_run",
            Write::AddTasks { .. } => "add_tasks",
            Write::Transitions { items, .. } => match items.as_slice() {
                [Transition::Started { .. }] => "task_started",
                [Transition::Ended { .. }] => "task_ended",
                [Transition::Status { .. }] => "task_status",
                _ => "transitions",
            },
            Write::SaveResult { .. } => "save_result",
            Write::AppendLog { .. } => "append_log",
            Write::FinishRun { .. } => "finish_run",
            Write::SetRunState { .. } => "set_run_state",
            Write::UpsertGraph(_) => "upsert_graph",
            Write::RecordEvent { .. } => "record_event",
            Write::Prune { .. } => "prune",
            #[cfg(test)]
            Write::Raw(_) => "raw",
        }
    }

    /// The run the write is about, for error messages.
    pub(crate) fn run_id(&self) -> Option<&str> {
        match self {
            Write::BeginRun(r) => Some(&r.run_id),
            Write::AddTasks { run_id, .. }
            | Write::Transitions { run_id, .. }
            | Write::SaveResult { run_id, .. }
            | Write::AppendLog { run_id, .. }
            | Write::FinishRun { run_id, .. }
            | Write::SetRunState { run_id, .. } => Some(run_id),
            Write::RecordEvent { run_id, .. } => run_id.as_deref(),
            Write::UpsertGraph(_) | Write::Prune { .. } => None,
            #[cfg(test)]
            Write::Raw(_) => None,
        }
    }
}
