//! Folding a batch's task transitions into one row write per task and per attempt.
//!
//! A task usually starts and ends within one group commit. Applied one by one, that is four
//! statements per task (started and ended upserts on the state and the attempt); folded, it is one
//! upsert of the task's state and one of its attempt (none for a clean first attempt, see
//! [`AttemptFold`]). The fold reproduces the sequential semantics exactly:
//! each field remembers whether the batch set it, and the upsert keeps the stored value of every
//! field the batch left alone (`started_us` keeps the first start, as the sequential verbs do).
//!
//! The statements are shared by every backend (see [`Rows`]).
//!
//! Only the fast path folds. When a folded batch fails for a reason other than its environment,
//! the writer replays it unfolded with a savepoint per write, so errors still name the one write
//! at fault.

use std::collections::HashMap;

use super::model::{ErrorInfo, TERMINAL_TASK_STATUSES};
use super::writer::{Param, Rows};

/// The latest values a batch gave one `task_state` row.
#[derive(Default)]
struct StateFold<'a> {
    status: &'a str,
    attempt: Option<u32>,
    /// The first start in the batch (kept only where the row has none).
    started_us: Option<i64>,
    ended_us: Option<Option<i64>>,
    error: Option<Option<&'a ErrorInfo>>,
}

/// The latest values a batch gave one `attempts` row.
///
/// A first attempt that starts and completes within one batch writes no `attempts` row at all:
/// the task's state row holds exactly its facts (attempt 1, its start and end, `completed`), and
/// readers present it as that attempt (see `read.rs`). That is most tasks, and a third of the
/// rows a run would write. Before a later attempt of such a task starts, its implicit first
/// attempt is written out, so the history stays whole.
struct AttemptFold<'a> {
    started_us: Option<i64>,
    ended_us: Option<i64>,
    status: &'a str,
    error: Option<&'a ErrorInfo>,
    retry_at_us: Option<i64>,
}

impl AttemptFold<'_> {
    /// Started and completed in this batch, cleanly: the task's state row says it all.
    fn is_implicit(&self) -> bool {
        self.started_us.is_some()
            && self.ended_us.is_some()
            && self.status == "completed"
            && self.error.is_none()
            && self.retry_at_us.is_none()
    }
}

type TaskKey = (i64, u32);

/// Pending row writes of one batch, in first-touched order.
#[derive(Default)]
pub(crate) struct Fold<'a> {
    states: HashMap<TaskKey, StateFold<'a>>,
    state_order: Vec<TaskKey>,
    attempts: HashMap<(TaskKey, u32), AttemptFold<'a>>,
    attempt_order: Vec<(TaskKey, u32)>,
    /// Tasks whose implicit first attempt must become a row before this batch changes them.
    materialize: Vec<TaskKey>,
}

impl<'a> Fold<'a> {
    pub(crate) fn is_empty(&self) -> bool {
        self.state_order.is_empty() && self.attempt_order.is_empty() && self.materialize.is_empty()
    }

    fn state(&mut self, rid: i64, node: u32) -> &mut StateFold<'a> {
        let key = (rid, node);
        let order = &mut self.state_order;
        self.states.entry(key).or_insert_with(|| {
            order.push(key);
            StateFold::default()
        })
    }

    pub(crate) fn started(&mut self, rid: i64, node: u32, attempt: u32, at_us: i64) {
        if attempt > 1 {
            self.materialize.push((rid, node));
        }
        let s = self.state(rid, node);
        s.status = "running";
        s.attempt = Some(attempt);
        s.started_us.get_or_insert(at_us);
        s.ended_us = Some(None);
        s.error = Some(None);
        let key = ((rid, node), attempt);
        let fold = AttemptFold {
            started_us: Some(at_us),
            ended_us: None,
            status: "running",
            error: None,
            retry_at_us: None,
        };
        if self.attempts.insert(key, fold).is_none() {
            self.attempt_order.push(key);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ended(
        &mut self,
        rid: i64,
        node: u32,
        attempt: u32,
        at_us: i64,
        status: &'a str,
        error: Option<&'a ErrorInfo>,
        retry_at_us: Option<i64>,
    ) {
        let s = self.state(rid, node);
        // A failed attempt that will be retried leaves the task retrying, not ended.
        (s.status, s.ended_us) = match retry_at_us {
            Some(_) => ("retrying", Some(None)),
            None => (status, Some(Some(at_us))),
        };
        s.attempt = Some(attempt);
        s.error = Some(error);
        let key = ((rid, node), attempt);
        let order = &mut self.attempt_order;
        let a = self.attempts.entry(key).or_insert_with(|| {
            order.push(key);
            AttemptFold {
                started_us: None,
                ended_us: None,
                status,
                error: None,
                retry_at_us: None,
            }
        });
        a.ended_us = Some(at_us);
        a.status = status;
        a.error = error;
        a.retry_at_us = retry_at_us;
    }

    pub(crate) fn status(&mut self, rid: i64, node: u32, status: &'a str, at_us: i64) {
        let s = self.state(rid, node);
        s.status = status;
        s.ended_us = Some(TERMINAL_TASK_STATUSES.contains(&status).then_some(at_us));
    }

    /// Writes every folded row and empties the fold.
    pub(crate) fn flush<R: Rows>(&mut self, c: &mut R) -> Result<(), R::Error> {
        // Reads the states as committed before this batch: they are written below.
        for (rid, node) in self.materialize.drain(..) {
            c.exec(
                MATERIALIZE_FIRST_ATTEMPT,
                &[Param::int(rid), Param::int(node)],
            )?;
        }
        if !self.state_order.is_empty() {
            let rows: Vec<FoldedState<'_>> = self
                .state_order
                .iter()
                .map(|key| {
                    let s = &self.states[key];
                    FoldedState {
                        rid: key.0,
                        node: i64::from(key.1),
                        status: s.status,
                        attempt: i64::from(s.attempt.unwrap_or(0)),
                        started_us: s.started_us,
                        ended_us: s.ended_us.flatten(),
                        error: s.error.flatten(),
                        set_attempt: s.attempt.is_some(),
                        set_ended: s.ended_us.is_some(),
                        set_error: s.error.is_some(),
                    }
                })
                .collect();
            c.upsert_states(&rows)?;
            self.state_order.clear();
            self.states.clear();
        }
        if !self.attempt_order.is_empty() {
            let rows: Vec<FoldedAttempt<'_>> = self
                .attempt_order
                .iter()
                .filter(|key| !(key.1 == 1 && self.attempts[key].is_implicit()))
                .map(|key| {
                    let a = &self.attempts[key];
                    FoldedAttempt {
                        rid: key.0 .0,
                        node: i64::from(key.0 .1),
                        attempt: i64::from(key.1),
                        started_us: a.started_us,
                        ended_us: a.ended_us,
                        status: a.status,
                        error: a.error,
                        retry_at_us: a.retry_at_us,
                        set_started: a.started_us.is_some(),
                    }
                })
                .collect();
            if !rows.is_empty() {
                c.upsert_attempts(&rows)?;
            }
            self.attempt_order.clear();
            self.attempts.clear();
        }
        Ok(())
    }
}

/// One task's folded `task_state` row; the `set_*` flags say which fields the batch set (the
/// others keep their stored values).
pub(crate) struct FoldedState<'a> {
    pub(crate) rid: i64,
    pub(crate) node: i64,
    pub(crate) status: &'a str,
    pub(crate) attempt: i64,
    pub(crate) started_us: Option<i64>,
    pub(crate) ended_us: Option<i64>,
    pub(crate) error: Option<&'a ErrorInfo>,
    pub(crate) set_attempt: bool,
    pub(crate) set_ended: bool,
    pub(crate) set_error: bool,
}

/// One attempt's folded `attempts` row; `set_started` says whether the batch started it.
pub(crate) struct FoldedAttempt<'a> {
    pub(crate) rid: i64,
    pub(crate) node: i64,
    pub(crate) attempt: i64,
    pub(crate) started_us: Option<i64>,
    pub(crate) ended_us: Option<i64>,
    pub(crate) status: &'a str,
    pub(crate) error: Option<&'a ErrorInfo>,
    pub(crate) retry_at_us: Option<i64>,
    pub(crate) set_started: bool,
}

/// Writes folded states one upsert each (the default of [`Rows::upsert_states`]).
pub(crate) fn upsert_states_each<R: Rows>(
    c: &mut R,
    rows: &[FoldedState<'_>],
) -> Result<(), R::Error> {
    for s in rows {
        c.exec(
            FOLD_STATE,
            &[
                Param::Int(Some(s.rid)),
                Param::Int(Some(s.node)),
                Param::Text(s.status),
                Param::Int(Some(s.attempt)),
                Param::Int(s.started_us),
                Param::Int(s.ended_us),
                Param::OptText(s.error.map(|e| e.type_name.as_str())),
                Param::OptText(s.error.map(|e| e.message.as_str())),
                Param::OptText(s.error.and_then(|e| e.traceback.as_deref())),
                Param::Bool(s.set_attempt),
                Param::Bool(s.set_ended),
                Param::Bool(s.set_error),
            ],
        )?;
    }
    Ok(())
}

/// Writes folded attempts one upsert each (the default of [`Rows::upsert_attempts`]).
pub(crate) fn upsert_attempts_each<R: Rows>(
    c: &mut R,
    rows: &[FoldedAttempt<'_>],
) -> Result<(), R::Error> {
    for a in rows {
        c.exec(
            FOLD_ATTEMPT,
            &[
                Param::Int(Some(a.rid)),
                Param::Int(Some(a.node)),
                Param::Int(Some(a.attempt)),
                Param::Int(a.started_us),
                Param::Int(a.ended_us),
                Param::Text(a.status),
                Param::OptText(a.error.map(|e| e.type_name.as_str())),
                Param::OptText(a.error.map(|e| e.message.as_str())),
                Param::OptText(a.error.and_then(|e| e.traceback.as_deref())),
                Param::Int(a.retry_at_us),
                Param::Bool(a.set_started),
            ],
        )?;
    }
    Ok(())
}

/// One task's folded state; `?10`-`?12` say whether the batch set attempt, end and error.
const FOLD_STATE: &str = "INSERT INTO task_state (rid, node, status, attempt, started_us, \
    ended_us, error_type, error_message, traceback) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
    ON CONFLICT (rid, node) DO UPDATE SET status = excluded.status, \
    attempt = CASE WHEN ?10 THEN excluded.attempt ELSE task_state.attempt END, \
    started_us = COALESCE(task_state.started_us, excluded.started_us), \
    ended_us = CASE WHEN ?11 THEN excluded.ended_us ELSE task_state.ended_us END, \
    error_type = CASE WHEN ?12 THEN excluded.error_type ELSE task_state.error_type END, \
    error_message = CASE WHEN ?12 THEN excluded.error_message ELSE task_state.error_message END, \
    traceback = CASE WHEN ?12 THEN excluded.traceback ELSE task_state.traceback END";

/// One attempt's folded row; `?11` says whether the batch started it (else its start is kept).
const FOLD_ATTEMPT: &str = "INSERT INTO attempts (rid, node, attempt, started_us, ended_us, \
    status, error_type, error_message, traceback, retry_at_us) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
    ON CONFLICT (rid, node, attempt) DO UPDATE SET \
    started_us = CASE WHEN ?11 THEN excluded.started_us ELSE attempts.started_us END, \
    ended_us = excluded.ended_us, status = excluded.status, error_type = excluded.error_type, \
    error_message = excluded.error_message, traceback = excluded.traceback, \
    retry_at_us = excluded.retry_at_us";

/// Writes out the implicit first attempt of task (`?1`, `?2`), if it has one: a state of
/// `completed` at attempt 1 with no attempt row.
pub(crate) const MATERIALIZE_FIRST_ATTEMPT: &str = "INSERT INTO attempts (rid, node, attempt, \
    started_us, ended_us, status) SELECT s.rid, s.node, 1, s.started_us, s.ended_us, s.status \
    FROM task_state s WHERE s.rid = ?1 AND s.node = ?2 AND s.attempt = 1 \
    AND s.status = 'completed' AND NOT EXISTS (SELECT 1 FROM attempts a \
    WHERE a.rid = s.rid AND a.node = s.node AND a.attempt = 1)";
