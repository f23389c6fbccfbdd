//! The seed's JSON state file, kept exactly in its format.
//!
//! Writers take an exclusive `flock` on `<state>.lock` (waiting at most `lock_timeout`), read the
//! file, change it, write `<state>.tmp`, fsync it and rename it over the state file. Readers need no
//! lock: a rename replaces the whole file at once, so every open sees one complete version. The
//! directory is not fsynced after the rename: after a power loss the state file is the new version
//! or the previous one, never a mix.
//!
//! Speed comes from not redoing work:
//! - the parsed file is cached with the identity of the version it came from (device, inode, size,
//!   mtime, ctime). While the cache holds that version open its inode cannot be reused, so an equal
//!   identity means an unchanged file and the parse is skipped;
//! - each task entry keeps the span of its text in the last file read or written; writing copies
//!   unchanged entries byte for byte and renders only the entries that changed;
//! - reading a version another process wrote compares each entry's text with the previous
//!   version's entry at that place, and parses only the entries that differ;
//! - the device starts writing the new file while it is still being copied out (see
//!   [`write_early`]).

use std::collections::HashMap;
use std::fs::{self, File, TryLockError};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::jsontext::{self, indent, write_pretty, write_str, Reader, SyntaxError};
use super::{
    check_final, check_new, metadata_members, new_id, with_result, Backend, Completion, Ctx,
    Holder, ListFilter, NewTask, Options, QueueError, Result, Snapshot, Status, Summary, Task,
};

/// A status as found in a file: one of the seed's five, or something else (kept, never claimed).
#[derive(Debug, Clone, PartialEq, Eq)]
enum St {
    Known(Status),
    Other(String),
}

impl St {
    fn parse(s: String) -> St {
        match Status::parse(&s) {
            Some(k) => St::Known(k),
            None => St::Other(s),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            St::Known(k) => k.as_str(),
            St::Other(s) => s,
        }
    }

    fn is(&self, k: Status) -> bool {
        *self == St::Known(k)
    }
}

/// Where an entry's text is: in the document's source bytes, or not yet rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text {
    Dirty,
    Src(usize, usize),
}

/// One task of the state file.
#[derive(Debug, Clone)]
struct Entry {
    id: String,
    ty: String,
    status: St,
    parent_id: Option<String>,
    locked_by: Option<String>,
    locked_at: Option<String>,
    /// `locked_at` as µs since the epoch (in-progress tasks only).
    lease_us: Option<i64>,
    created_at: Option<String>,
    completed_at: Option<String>,
    data: Vec<u8>,
    priority: i64,
    attempt: u32,
    max_attempts: Option<u32>,
    wait_for_parent: bool,
    extra: Vec<(String, Vec<u8>)>,
    text: Text,
}

impl Entry {
    fn exhausted(&self) -> bool {
        self.max_attempts.is_some_and(|m| self.attempt >= m)
    }

    fn to_task(&self) -> Task {
        Task {
            id: self.id.clone(),
            task_type: self.ty.clone(),
            status: self.status.as_str().to_owned(),
            parent_id: self.parent_id.clone(),
            locked_by: self.locked_by.clone(),
            locked_at: self.locked_at.clone(),
            created_at: self.created_at.clone(),
            completed_at: self.completed_at.clone(),
            data: self.data.clone(),
            priority: self.priority,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            wait_for_parent: self.wait_for_parent,
            extra: self.extra.clone(),
        }
    }

    fn from_task(t: &Task, ctx: &Ctx) -> Entry {
        let status = St::parse(t.status.clone());
        let lease_us = if status.is(Status::InProgress) {
            t.locked_at.as_deref().and_then(|s| ctx.parse_iso(s))
        } else {
            None
        };
        Entry {
            id: t.id.clone(),
            ty: t.task_type.clone(),
            status,
            parent_id: t.parent_id.clone(),
            locked_by: t.locked_by.clone(),
            locked_at: t.locked_at.clone(),
            lease_us,
            created_at: t.created_at.clone(),
            completed_at: t.completed_at.clone(),
            data: t.data.clone(),
            priority: t.priority,
            attempt: t.attempt,
            max_attempts: t.max_attempts,
            wait_for_parent: t.wait_for_parent,
            extra: t.extra.clone(),
            text: Text::Dirty,
        }
    }

    /// Writes `"id": {...}` as `json.dump(indent=2)` writes a member of `tasks` (at depth 2).
    fn render(&self, out: &mut Vec<u8>) {
        fn opt(out: &mut Vec<u8>, v: &Option<String>) {
            match v {
                Some(s) => write_str(out, s),
                None => out.extend_from_slice(b"null"),
            }
        }
        fn key(out: &mut Vec<u8>, k: &str) {
            out.extend_from_slice(b",\n");
            indent(out, 3);
            write_str(out, k);
            out.extend_from_slice(b": ");
        }
        write_str(out, &self.id);
        out.extend_from_slice(b": {\n");
        indent(out, 3);
        out.extend_from_slice(b"\"type\": ");
        write_str(out, &self.ty);
        key(out, "status");
        write_str(out, self.status.as_str());
        key(out, "parent_id");
        opt(out, &self.parent_id);
        key(out, "locked_by");
        opt(out, &self.locked_by);
        key(out, "locked_at");
        opt(out, &self.locked_at);
        key(out, "created_at");
        opt(out, &self.created_at);
        key(out, "completed_at");
        opt(out, &self.completed_at);
        key(out, "data");
        write_pretty(out, &self.data, 3);
        if self.priority != 0 {
            key(out, "priority");
            out.extend_from_slice(self.priority.to_string().as_bytes());
        }
        if self.attempt != 0 {
            key(out, "attempt");
            out.extend_from_slice(self.attempt.to_string().as_bytes());
        }
        if let Some(m) = self.max_attempts {
            key(out, "max_attempts");
            out.extend_from_slice(m.to_string().as_bytes());
        }
        if self.wait_for_parent {
            key(out, "wait_for_parent");
            out.extend_from_slice(b"true");
        }
        for (k, v) in &self.extra {
            key(out, k);
            write_pretty(out, v, 3);
        }
        out.push(b'\n');
        indent(out, 2);
        out.push(b'}');
    }
}

/// A top-level member of the state file, in file order.
#[derive(Debug, Clone)]
enum Top {
    Metadata,
    Tasks,
    Other(String, Vec<u8>),
}

/// The parsed state file.
#[derive(Debug, Clone)]
pub(crate) struct Doc {
    /// The bytes entries' [`Text::Src`] spans point into.
    src: Vec<u8>,
    top: Vec<Top>,
    metadata: Vec<(String, Vec<u8>)>,
    /// Boxed: reading another process's version moves every entry twice (into the previous
    /// version's slots, then into the new list): 8 bytes a pointer instead of an entry's 304;
    /// with 20,000 tasks that was 12 MB copied under the lock at every handover, and boxing
    /// measured 8-11% more operations per second with eight agents (none lost with one).
    #[allow(clippy::vec_box)]
    entries: Vec<Box<Entry>>,
    index: HashMap<String, usize>,
}

fn corrupt_field(id: &str, field: &str, want: &str) -> String {
    format!("task {id:?}: field {field:?} must be {want}")
}

/// Reads a non-negative integer that fits `u32`, or null when `nullable`.
fn read_u32(
    r: &mut Reader<'_>,
    id: &str,
    field: &str,
    nullable: bool,
) -> Result<Option<u32>, String> {
    let raw = r.raw().map_err(|e| e.message)?;
    if nullable && raw == b"null" {
        return Ok(None);
    }
    std::str::from_utf8(&raw)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| corrupt_field(id, field, "a non-negative integer"))
}

/// Builds a "corrupt" message from a syntax error, with line and column.
fn syntax_message(e: &SyntaxError, input: &[u8]) -> String {
    let (line, col) = e.line_col(input);
    format!("invalid JSON at line {line} column {col}: {}", e.message)
}

impl Doc {
    /// A new, empty state as the seed initialises it.
    fn new(ctx: &Ctx, now: i64) -> Doc {
        let ts = jsontext::str_text(&ctx.iso(now));
        Doc {
            src: Vec::new(),
            top: vec![
                Top::Other("workflow_type".into(), jsontext::str_text("generic")),
                Top::Metadata,
                Top::Tasks,
            ],
            metadata: vec![
                ("initialized_at".into(), ts.clone()),
                ("last_updated".into(), ts),
            ],
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Parses a state file. The error is a message for [`QueueError::Corrupt`].
    ///
    /// `prev` is the previous version's parse: an entry whose text is byte-for-byte the text of
    /// the same id in `prev` is taken over without parsing it again (between two versions only the
    /// entries an operation changed differ).
    fn parse(src: Vec<u8>, ctx: &Ctx, prev: Option<Doc>) -> Result<Doc, String> {
        // The text must be UTF-8. An entry taken over from `prev` is bytes of a text that was,
        // from a `"` to a `}` (character boundaries), so only the text around such entries is
        // checked, as the reader passes it (`checked`: up to where).
        let mut checked = 0;
        let mut utf8 = true;
        let mut top = Vec::new();
        let mut metadata = Vec::new();
        let mut entries: Vec<Box<Entry>> = Vec::new();
        let mut field_error: Option<String> = None;
        let mut same_places = false;
        let mut old = prev.map(|p| {
            let slots: Vec<Option<Box<Entry>>> = p.entries.into_iter().map(Some).collect();
            (p.src, slots, p.index)
        });
        let mut r = Reader::new(&src);
        let parsed = (|| -> Result<(), SyntaxError> {
            if r.peek_kind()? != jsontext::Kind::Object {
                return Err(SyntaxError {
                    pos: r.pos,
                    message: "the state must be a JSON object".into(),
                });
            }
            r.object(|r, key| {
                match key.as_str() {
                    "metadata" => {
                        if r.peek_kind()? != jsontext::Kind::Object {
                            field_error.get_or_insert("\"metadata\" must be an object".into());
                            r.raw()?;
                            return Ok(());
                        }
                        metadata.clear();
                        r.object(|r, k| {
                            let v = r.raw()?;
                            jsontext::set_member(&mut metadata, &k, v);
                            Ok(())
                        })?;
                        if !top.iter().any(|t| matches!(t, Top::Metadata)) {
                            top.push(Top::Metadata);
                        }
                    }
                    "tasks" => {
                        if r.peek_kind()? != jsontext::Kind::Object {
                            field_error.get_or_insert("\"tasks\" must be an object".into());
                            r.raw()?;
                            return Ok(());
                        }
                        entries.clear();
                        // Most versions have as many entries as the one before.
                        entries.reserve(old.as_ref().map_or(0, |o| o.1.len()));
                        same_places = true;
                        // The previous version's entry expected next: between two versions most
                        // entries are unchanged and in the same order, so comparing the text
                        // here with that entry's finds them without reading the key.
                        let mut next = 0;
                        r.members(|r| {
                            let at = entries.len();
                            let start = r.pos;
                            if let Some(e) = take_next(&src, start, next, &mut old) {
                                let Text::Src(_, end) = e.text else {
                                    unreachable!("take_next returns entries with text")
                                };
                                utf8 &= src.get(checked..start).is_some_and(is_utf8);
                                checked = end;
                                // While `same_places` holds, `next == at`: no check needed.
                                r.pos = end;
                                next += 1;
                                entries.push(e);
                                return Ok(());
                            }
                            let id = r.key()?;
                            let was_at = old.as_ref().and_then(|o| o.2.get(&id).copied());
                            same_places &= was_at == Some(at);
                            if let Some(j) = was_at {
                                next = j + 1;
                            }
                            if let Some(e) = reuse(r, &src, start, &id, &mut old)? {
                                utf8 &= src.get(checked..start).is_some_and(is_utf8);
                                checked = r.pos;
                                entries.push(e);
                                return Ok(());
                            }
                            match parse_entry(r, id, start, ctx)? {
                                Ok(e) => entries.push(Box::new(e)),
                                Err(msg) => {
                                    field_error.get_or_insert(msg);
                                }
                            }
                            Ok(())
                        })?;
                        if !top.iter().any(|t| matches!(t, Top::Tasks)) {
                            top.push(Top::Tasks);
                        }
                    }
                    _ => {
                        let v = r.raw()?;
                        match top
                            .iter_mut()
                            .find(|t| matches!(t, Top::Other(k, _) if *k == key))
                        {
                            Some(Top::Other(_, old)) => *old = v,
                            _ => top.push(Top::Other(key, v)),
                        }
                    }
                }
                Ok(())
            })?;
            r.end()
        })();
        // Text that is not UTF-8 is reported first (at its first such byte), whatever else is
        // wrong with it.
        if !utf8
            || parsed.is_err()
            || field_error.is_some()
            || !src.get(checked..).is_some_and(is_utf8)
        {
            if let Err(e) = std::str::from_utf8(&src) {
                return Err(format!("not UTF-8 text (byte {})", e.valid_up_to()));
            }
        }
        if let Err(e) = parsed {
            return Err(syntax_message(&e, &src));
        }
        if let Some(msg) = field_error {
            return Err(msg);
        }
        for t in [Top::Metadata, Top::Tasks] {
            if !top
                .iter()
                .any(|x| std::mem::discriminant(x) == std::mem::discriminant(&t))
            {
                top.push(t);
            }
        }
        // The same ids at the same places as before: the previous index still holds.
        let index = match old {
            Some((_, _, old_index)) if same_places && old_index.len() == entries.len() => old_index,
            _ => index_entries(&mut entries),
        };
        Ok(Doc {
            src,
            top,
            metadata,
            entries,
            index,
        })
    }

    fn from_snapshot(s: &Snapshot, ctx: &Ctx) -> Doc {
        let mut top: Vec<Top> = s
            .top
            .iter()
            .map(|(k, v)| Top::Other(k.clone(), v.clone()))
            .collect();
        top.push(Top::Metadata);
        top.push(Top::Tasks);
        let entries: Vec<Box<Entry>> = s
            .tasks
            .iter()
            .map(|t| Box::new(Entry::from_task(t, ctx)))
            .collect();
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect();
        Doc {
            src: Vec::new(),
            top,
            metadata: s.metadata.clone(),
            entries,
            index,
        }
    }

    fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            top: self
                .top
                .iter()
                .filter_map(|t| match t {
                    Top::Other(k, v) => Some((k.clone(), v.clone())),
                    _ => None,
                })
                .collect(),
            metadata: self.metadata.clone(),
            tasks: self.entries.iter().map(|e| e.to_task()).collect(),
        }
    }

    /// Renders the state as `json.dump(state, f, indent=2)` would, into `out`, and points every
    /// entry's span into `out` (which the caller makes the new `src`).
    fn render(&mut self, out: &mut Vec<u8>) {
        out.clear();
        out.push(b'{');
        let mut first = true;
        for item in &self.top {
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'\n');
            indent(out, 1);
            match item {
                Top::Other(k, v) => {
                    write_str(out, k);
                    out.extend_from_slice(b": ");
                    write_pretty(out, v, 1);
                }
                Top::Metadata => {
                    out.extend_from_slice(b"\"metadata\": ");
                    if self.metadata.is_empty() {
                        out.extend_from_slice(b"{}");
                    } else {
                        out.push(b'{');
                        for (i, (k, v)) in self.metadata.iter().enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            out.push(b'\n');
                            indent(out, 2);
                            write_str(out, k);
                            out.extend_from_slice(b": ");
                            write_pretty(out, v, 2);
                        }
                        out.push(b'\n');
                        indent(out, 1);
                        out.push(b'}');
                    }
                }
                Top::Tasks => {
                    out.extend_from_slice(b"\"tasks\": ");
                    if self.entries.is_empty() {
                        out.extend_from_slice(b"{}");
                    } else {
                        out.push(b'{');
                        for (i, e) in self.entries.iter_mut().enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            out.push(b'\n');
                            indent(out, 2);
                            let start = out.len();
                            match e.text {
                                Text::Src(a, b) => out.extend_from_slice(&self.src[a..b]),
                                Text::Dirty => e.render(out),
                            }
                            e.text = Text::Src(start, out.len());
                        }
                        out.push(b'\n');
                        indent(out, 1);
                        out.push(b'}');
                    }
                }
            }
        }
        out.extend_from_slice(b"\n}");
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Whether entry `i` waits for a parent that has not completed.
    fn blocked(&self, e: &Entry) -> bool {
        if !e.wait_for_parent {
            return false;
        }
        match e.parent_id.as_deref().and_then(|p| self.find(p)) {
            Some(p) => !self.entries[p].status.is(Status::Completed),
            None => false,
        }
    }

    /// Cancels the pending tasks that wait (transitively) for `id`.
    fn cancel_waiters(&mut self, id: &str, now_iso: &str) {
        let mut stack = vec![id.to_owned()];
        while let Some(parent) = stack.pop() {
            for e in &mut self.entries {
                if e.wait_for_parent
                    && e.status.is(Status::Pending)
                    && e.parent_id.as_deref() == Some(parent.as_str())
                {
                    e.status = St::Known(Status::Cancelled);
                    e.completed_at = Some(now_iso.to_owned());
                    e.text = Text::Dirty;
                    stack.push(e.id.clone());
                }
            }
        }
    }

    /// Ends the lease of entry `i`: back to pending, or failed when its attempts are used up.
    fn end_lease(&mut self, i: usize, now_iso: &str) {
        let e = &mut self.entries[i];
        e.locked_by = None;
        e.locked_at = None;
        e.lease_us = None;
        e.text = Text::Dirty;
        if e.exhausted() {
            e.status = St::Known(Status::Failed);
            e.completed_at = Some(now_iso.to_owned());
            let id = e.id.clone();
            self.cancel_waiters(&id, now_iso);
        } else {
            e.status = St::Known(Status::Pending);
        }
    }

    /// Recovers expired leases. Returns whether anything changed.
    fn sweep(&mut self, ctx: &Ctx, now: i64) -> bool {
        let expired: Vec<usize> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.status.is(Status::InProgress) && ctx.expired(e.lease_us, now))
            .map(|(i, _)| i)
            .collect();
        if expired.is_empty() {
            return false;
        }
        let now_iso = ctx.iso(now);
        for i in expired {
            self.end_lease(i, &now_iso);
        }
        true
    }

    fn claim(
        &mut self,
        ctx: &Ctx,
        now: i64,
        agent: &str,
        types: Option<&[String]>,
    ) -> Option<usize> {
        let mut best: Option<(i64, usize)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if !e.status.is(Status::Pending) {
                continue;
            }
            if best.is_some_and(|(p, _)| e.priority <= p) {
                continue;
            }
            if let Some(ts) = types {
                if !ts.contains(&e.ty) {
                    continue;
                }
            }
            if self.blocked(e) {
                continue;
            }
            best = Some((e.priority, i));
        }
        let (_, i) = best?;
        let e = &mut self.entries[i];
        e.status = St::Known(Status::InProgress);
        e.locked_by = Some(agent.to_owned());
        e.locked_at = Some(ctx.iso(now));
        e.lease_us = Some(now);
        e.attempt = e.attempt.saturating_add(1);
        e.text = Text::Dirty;
        Some(i)
    }

    /// The entry `agent` holds under `attempt`, if it does.
    fn held(&self, id: &str, agent: &str, attempt: Option<u32>) -> Option<usize> {
        let i = self.find(id)?;
        let e = &self.entries[i];
        let ok = e.status.is(Status::InProgress)
            && e.locked_by.as_deref() == Some(agent)
            && attempt.is_none_or(|a| a == e.attempt);
        ok.then_some(i)
    }

    /// Ends the task `agent` holds (see [`Backend::complete`]); false if it does not hold it.
    fn finish(&mut self, now_iso: &str, agent: &str, c: &Completion<'_>) -> Result<bool> {
        let Some(i) = self.held(c.id, agent, c.attempt) else {
            return Ok(false);
        };
        let data = match c.result {
            Some(r) => Some(with_result(c.id, &self.entries[i].data, r)?),
            None => None,
        };
        let e = &mut self.entries[i];
        e.status = St::Known(c.status);
        e.completed_at = Some(now_iso.to_owned());
        e.lease_us = None;
        if let Some(d) = data {
            e.data = d;
        }
        e.text = Text::Dirty;
        if c.status != Status::Completed {
            self.cancel_waiters(c.id, now_iso);
        }
        Ok(true)
    }

    fn create(&mut self, ctx: &Ctx, now: i64, tasks: &[NewTask]) -> Result<Vec<String>> {
        let now_iso = ctx.iso(now);
        let mut ids = Vec::with_capacity(tasks.len());
        self.index.reserve(tasks.len());
        self.entries.reserve(tasks.len());
        for t in tasks {
            let data = check_new(t)?;
            let mut status = St::Known(Status::Pending);
            let mut completed_at = None;
            if t.wait_for_parent {
                let parent = t.parent_id.as_deref().unwrap_or_default();
                let Some(p) = self.find(parent) else {
                    return Err(QueueError::Invalid(format!(
                        "wait_for_parent: parent task {parent:?} does not exist"
                    )));
                };
                if matches!(
                    self.entries[p].status,
                    St::Known(Status::Failed | Status::Cancelled)
                ) {
                    status = St::Known(Status::Cancelled);
                    completed_at = Some(now_iso.clone());
                }
            }
            let id = loop {
                let id = new_id(&t.task_type);
                if !self.index.contains_key(&id) {
                    break id;
                }
            };
            self.index.insert(id.clone(), self.entries.len());
            self.entries.push(Box::new(Entry {
                id: id.clone(),
                ty: t.task_type.clone(),
                status,
                parent_id: t.parent_id.clone(),
                locked_by: None,
                locked_at: None,
                lease_us: None,
                created_at: Some(now_iso.clone()),
                completed_at,
                data,
                priority: t.priority,
                attempt: 0,
                max_attempts: t.max_attempts,
                wait_for_parent: t.wait_for_parent,
                extra: Vec::new(),
                text: Text::Dirty,
            }));
            ids.push(id);
        }
        Ok(ids)
    }

    fn set_metadata(&mut self, key: &str, value: Vec<u8>) {
        jsontext::set_member(&mut self.metadata, key, value);
    }

    fn summary(&self) -> Summary {
        let mut known = [0u64; 5];
        let mut other: Vec<(String, u64)> = Vec::new();
        let mut types: Vec<(String, u64)> = Vec::new();
        let mut type_pos: HashMap<&str, usize> = HashMap::new();
        for e in &self.entries {
            match &e.status {
                St::Known(k) => known[Status::ALL.iter().position(|s| s == k).unwrap_or(0)] += 1,
                St::Other(s) => match other.iter_mut().find(|(o, _)| o == s) {
                    Some(c) => c.1 += 1,
                    None => other.push((s.clone(), 1)),
                },
            }
            match type_pos.get(e.ty.as_str()) {
                Some(&i) => types[i].1 += 1,
                None => {
                    type_pos.insert(&e.ty, types.len());
                    types.push((e.ty.clone(), 1));
                }
            }
        }
        let mut status_counts: Vec<(String, u64)> = Status::ALL
            .iter()
            .zip(known)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| (s.as_str().to_owned(), n))
            .collect();
        status_counts.extend(other);
        Summary {
            total: self.entries.len() as u64,
            status_counts,
            type_counts: types,
            metadata: jsontext::object_text(&self.metadata),
        }
    }
}

fn is_utf8(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok()
}

/// Indexes entries by id. A repeated id (a JSON object may repeat a key) keeps the last value in
/// the first one's place, as Python's `json.load` does.
#[allow(clippy::vec_box)] // see `Doc::entries`
fn index_entries(entries: &mut Vec<Box<Entry>>) -> HashMap<String, usize> {
    let mut index: HashMap<String, usize> = HashMap::with_capacity(entries.len());
    let mut repeated = false;
    for i in 0..entries.len() {
        match index.get(&entries[i].id) {
            Some(&first) => {
                entries.swap(first, i);
                repeated = true;
            }
            None => {
                index.insert(entries[i].id.clone(), i);
            }
        }
    }
    if repeated {
        let mut i = 0;
        entries.retain(|e| {
            let keep = index.get(&e.id) == Some(&i);
            i += 1;
            keep
        });
        for (i, e) in entries.iter().enumerate() {
            index.insert(e.id.clone(), i);
        }
    }
    index
}

/// The previous version of a document, taken apart for [`reuse`].
type Prev = Option<(Vec<u8>, Vec<Option<Box<Entry>>>, HashMap<String, usize>)>;

/// Takes over the previous version's entry number `j` if the text at `start` is its whole member
/// (key and value), byte for byte. Entries are objects, so their text ends at the object's `}`
/// and equal bytes cannot be the beginning of a longer value.
fn take_next(src: &[u8], start: usize, j: usize, prev: &mut Prev) -> Option<Box<Entry>> {
    let (old_src, slots, _) = prev.as_mut()?;
    let slot = slots.get_mut(j)?;
    let Some(Text::Src(a, b)) = slot.as_ref().map(|e| e.text) else {
        return None;
    };
    let text = old_src.get(a..b)?;
    if text.last() != Some(&b'}') || src.get(start..start + text.len()) != Some(text) {
        return None;
    }
    let mut e = slot.take()?;
    e.text = Text::Src(start, start + text.len());
    Some(e)
}

/// Takes over the previous version's entry `id` if its text is unchanged (the reader is then past
/// the value); otherwise leaves the reader where it was.
fn reuse(
    r: &mut Reader<'_>,
    src: &[u8],
    start: usize,
    id: &str,
    prev: &mut Prev,
) -> Result<Option<Box<Entry>>, SyntaxError> {
    let Some((old_src, slots, old_index)) = prev else {
        return Ok(None);
    };
    let Some(slot) = old_index.get(id).and_then(|&i| slots.get_mut(i)) else {
        return Ok(None);
    };
    let Some(Text::Src(a, b)) = slot.as_ref().map(|e| e.text) else {
        return Ok(None);
    };
    let save = r.pos;
    if r.skip_unchecked().is_ok() && src.get(start..r.pos) == old_src.get(a..b) {
        if let Some(mut e) = slot.take() {
            e.text = Text::Src(start, r.pos);
            return Ok(Some(e));
        }
    }
    r.pos = save;
    Ok(None)
}

/// Parses one task entry. The outer error is a syntax error; the inner one a structural problem.
fn parse_entry(
    r: &mut Reader<'_>,
    id: String,
    start: usize,
    ctx: &Ctx,
) -> Result<Result<Entry, String>, SyntaxError> {
    if r.peek_kind()? != jsontext::Kind::Object {
        r.raw()?;
        return Ok(Err(format!("task {id:?} must be an object")));
    }
    let mut ty = None;
    let mut status = None;
    let mut e = Entry {
        id: String::new(),
        ty: String::new(),
        status: St::Known(Status::Pending),
        parent_id: None,
        locked_by: None,
        locked_at: None,
        lease_us: None,
        created_at: None,
        completed_at: None,
        data: b"{}".to_vec(),
        priority: 0,
        attempt: 0,
        max_attempts: None,
        wait_for_parent: false,
        extra: Vec::new(),
        text: Text::Dirty,
    };
    let mut problem: Option<String> = None;
    r.object(|r, key| {
        let string_or_null =
            |r: &mut Reader<'_>, problem: &mut Option<String>| match r.peek_kind()? {
                jsontext::Kind::String | jsontext::Kind::Null => r.opt_string(),
                _ => {
                    r.raw()?;
                    problem.get_or_insert(corrupt_field(&id, &key, "a string or null"));
                    Ok(None)
                }
            };
        match key.as_str() {
            "type" | "status" => {
                let v = string_or_null(r, &mut problem)?;
                match v {
                    Some(v) if key == "type" => ty = Some(v),
                    Some(v) => status = Some(v),
                    None => {
                        problem.get_or_insert(corrupt_field(&id, &key, "a string"));
                    }
                }
            }
            "parent_id" => e.parent_id = string_or_null(r, &mut problem)?,
            "locked_by" => e.locked_by = string_or_null(r, &mut problem)?,
            "locked_at" => e.locked_at = string_or_null(r, &mut problem)?,
            "created_at" => e.created_at = string_or_null(r, &mut problem)?,
            "completed_at" => e.completed_at = string_or_null(r, &mut problem)?,
            "data" => e.data = r.raw()?,
            "priority" => {
                let raw = r.raw()?;
                match std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    Some(p) => e.priority = p,
                    None => {
                        problem.get_or_insert(corrupt_field(&id, &key, "an integer"));
                    }
                }
            }
            "attempt" => match read_u32(r, &id, &key, false) {
                Ok(v) => e.attempt = v.unwrap_or(0),
                Err(m) => {
                    problem.get_or_insert(m);
                }
            },
            "max_attempts" => match read_u32(r, &id, &key, true) {
                Ok(v) => e.max_attempts = v,
                Err(m) => {
                    problem.get_or_insert(m);
                }
            },
            "wait_for_parent" => {
                let raw = r.raw()?;
                match raw.as_slice() {
                    b"true" => e.wait_for_parent = true,
                    b"false" => e.wait_for_parent = false,
                    _ => {
                        problem.get_or_insert(corrupt_field(&id, &key, "true or false"));
                    }
                }
            }
            _ => {
                let v = r.raw()?;
                jsontext::set_member(&mut e.extra, &key, v);
            }
        }
        Ok(())
    })?;
    if let Some(p) = problem {
        return Ok(Err(p));
    }
    let (Some(ty), Some(status)) = (ty, status) else {
        return Ok(Err(format!(
            "task {id:?} needs a \"type\" and a \"status\""
        )));
    };
    e.ty = ty;
    e.status = St::parse(status);
    if e.status.is(Status::InProgress) {
        e.lease_us = e.locked_at.as_deref().and_then(|s| ctx.parse_iso(s));
    }
    e.id = id;
    e.text = Text::Src(start, r.pos);
    Ok(Ok(e))
}

/// Renders a snapshot in the seed's format.
pub(crate) fn render_snapshot(s: &Snapshot) -> Vec<u8> {
    let ctx = Ctx::new(&Options::default());
    let mut doc = Doc::from_snapshot(s, &ctx);
    let mut out = Vec::new();
    doc.render(&mut out);
    out
}

/// The longest sleep between two tries to take the lock. A `flock` cannot be waited on with a
/// time limit, so waiters poll; the lock is free for about half a pause before a lone waiter
/// notices. An operation on a 20,000-task file holds the lock about 12 ms (mostly the fsync), and
/// with two processes a 2 ms pause left it free a twelfth of the time; 500 µs costs a waiter 2,000
/// `flock` calls a second and measured 5-10% more operations with two and eight processes.
const LOCK_MAX_PAUSE: Duration = Duration::from_micros(500);

/// Writes `buf` to the new file `f` in pieces, asking the kernel to start writing each piece to
/// the device at once (Linux `sync_file_range`, advisory: the fsync that follows is what makes
/// the file durable), so the device works while the rest is copied. Measured on a 5 MB file: the
/// fsync after it took 5.3 ms instead of 6.5-7, and operations were 5-10% faster.
fn write_early(f: &mut File, buf: &[u8]) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut at = 0;
        for piece in buf.chunks(EARLY_PIECE) {
            f.write_all(piece)?;
            // SAFETY: an advisory call on a descriptor we own; failing loses only the head start.
            unsafe {
                libc::sync_file_range(
                    f.as_raw_fd(),
                    at as libc::off64_t,
                    piece.len() as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            at += piece.len();
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    f.write_all(buf)
}

/// The pieces [`write_early`] hands to the device one by one.
#[cfg(target_os = "linux")]
const EARLY_PIECE: usize = 512 * 1024;

/// What identifies one version of the state file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Ident {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Ident {
    #[cfg(unix)]
    fn of(m: &fs::Metadata) -> Ident {
        use std::os::unix::fs::MetadataExt;
        Ident {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    #[cfg(not(unix))]
    fn of(m: &fs::Metadata) -> Ident {
        let t = |r: std::io::Result<std::time::SystemTime>| {
            r.ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or((0, 0), |d| (d.as_secs() as i64, d.subsec_nanos() as i64))
        };
        Ident {
            dev: 0,
            ino: 0,
            size: m.len(),
            mtime: t(m.modified()),
            ctime: t(m.created()),
        }
    }
}

/// The cached parse of one version of the file (or of a missing file: `ident` None).
struct Loaded {
    doc: Doc,
    ident: Option<Ident>,
    /// Keeps the version's inode allocated, so no later file can have the same identity.
    _hold: Option<File>,
}

/// The files of one state: `<state>`, `<state>.lock`, `<state>.tmp`.
struct Files {
    path: PathBuf,
    lock: PathBuf,
    tmp: PathBuf,
    /// The mode of files created here (see `crate::store::files`).
    mode: u32,
}

impl Files {
    fn io(&self, op: &'static str, path: &Path, source: std::io::Error) -> QueueError {
        QueueError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// The seed's JSON state file.
pub struct JsonBackend {
    files: Files,
    ctx: Ctx,
    cache: Option<Loaded>,
    /// The lock file, kept open between writes, and the process that opened it: a `flock`
    /// belongs to an open file, so a forked child opens its own.
    lock_file: Option<(File, u32)>,
}

/// The exclusive lock, released on drop.
struct Held<'a>(&'a File);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // `File::unlock` is std since Rust 1.89; the crate's declared MSRV predates it. Closing
        // the file would release the lock too, so a failure here is left to process exit.
        #[allow(clippy::incompatible_msrv)]
        let _ = self.0.unlock();
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl JsonBackend {
    /// Opens the state file, creating it (and its directory) if missing, as the seed does.
    pub fn open(path: &Path, opts: Options) -> Result<JsonBackend> {
        let files = Files {
            path: path.to_owned(),
            lock: with_suffix(path, ".lock"),
            tmp: with_suffix(path, ".tmp"),
            // Owner-only unless configured.
            mode: crate::store::files::file_mode(None).map_err(QueueError::Invalid)?,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::store::files::create_dir_all(dir, files.mode)
                .map_err(|e| files.io("create directory", dir, e))?;
        }
        let mut b = JsonBackend {
            files,
            ctx: Ctx::new(&opts),
            cache: None,
            lock_file: None,
        };
        // Validates an existing file (reading needs no lock), or writes the initial state.
        let exists = Self::refresh(&b.files, &b.ctx, &mut b.cache, &mut Vec::new())?
            .ident
            .is_some();
        if !exists {
            b.write(|_, _, _| Ok(((), false)))?;
        }
        Ok(b)
    }

    /// The path of the lock file.
    pub fn lock_path(&self) -> &Path {
        &self.files.lock
    }

    /// Takes the exclusive lock, waiting at most `lock_timeout`.
    fn lock<'a>(
        files: &Files,
        ctx: &Ctx,
        lock_file: &'a mut Option<(File, u32)>,
    ) -> Result<Held<'a>> {
        let start = Instant::now();
        let pid = std::process::id();
        loop {
            if lock_file.as_ref().is_none_or(|(_, p)| *p != pid) {
                let f = crate::store::files::options(files.mode)
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&files.lock)
                    .map_err(|e| files.io("open lock file", &files.lock, e))?;
                // A parent's file is left open: closing it would not release the parent's
                // lock, but it is the parent's to close.
                if let Some(old) = lock_file.replace((f, pid)) {
                    std::mem::forget(old);
                }
            }
            let Some((f, _)) = lock_file.as_ref() else {
                return Err(QueueError::Invalid("lock file unavailable".into()));
            };
            Self::wait_for_lock(files, ctx, f, start)?;
            if Self::still_the_lock_file(files, f) {
                break;
            }
            // The lock file was deleted or replaced while we kept it open: a lock on it
            // excludes nobody. Let go, and lock the file now at the path.
            #[allow(clippy::incompatible_msrv)]
            let _ = f.unlock();
            *lock_file = None;
        }
        match lock_file.as_ref() {
            Some((f, _)) => Ok(Held(f)),
            None => Err(QueueError::Invalid("lock file unavailable".into())),
        }
    }

    /// Waits until `f` is locked, at most until `lock_timeout` after `start`: tries, sleeping
    /// between tries from 50 µs doubling up to [`LOCK_MAX_PAUSE`].
    fn wait_for_lock(files: &Files, ctx: &Ctx, f: &File, start: Instant) -> Result<()> {
        let mut pause = Duration::from_micros(50);
        loop {
            // `File::try_lock` is std since Rust 1.89; the crate's declared MSRV predates it.
            #[allow(clippy::incompatible_msrv)]
            let attempt = f.try_lock();
            match attempt {
                Ok(()) => return Ok(()),
                Err(TryLockError::WouldBlock) => {
                    let waited = start.elapsed();
                    if waited >= ctx.lock_timeout {
                        return Err(QueueError::LockTimeout {
                            path: files.lock.clone(),
                            timeout: ctx.lock_timeout,
                        });
                    }
                    std::thread::sleep(pause.min(ctx.lock_timeout - waited));
                    pause = (pause * 2).min(LOCK_MAX_PAUSE);
                }
                Err(TryLockError::Error(e)) => {
                    return Err(files.io("lock", &files.lock, e));
                }
            }
        }
    }

    /// Whether the open lock file `f` is the file at the lock path (same device and inode).
    fn still_the_lock_file(files: &Files, f: &File) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            match (fs::metadata(&files.lock), f.metadata()) {
                (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
                _ => false,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (files, f);
            true
        }
    }

    /// Brings the cache up to date with the file; returns it.
    ///
    /// The version the cache held before is pushed to `retired`: closing a replaced version frees
    /// its blocks (milliseconds for a large file), which writers do after releasing the lock.
    fn refresh<'a>(
        files: &Files,
        ctx: &Ctx,
        cache: &'a mut Option<Loaded>,
        retired: &mut Vec<File>,
    ) -> Result<&'a mut Loaded> {
        let file = match File::open(&files.path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(files.io("open", &files.path, e)),
        };
        let ident = match &file {
            Some(f) => Some(Ident::of(
                &f.metadata().map_err(|e| files.io("stat", &files.path, e))?,
            )),
            None => None,
        };
        if !cache.as_ref().is_some_and(|c| c.ident == ident) {
            let prev = cache.take().map(|c| {
                retired.extend(c._hold);
                c.doc
            });
            let doc = match &file {
                Some(f) => {
                    let size = ident.map_or(0, |i| i.size) as usize;
                    let mut bytes = Vec::with_capacity(size + 1);
                    let mut reader: &File = f;
                    reader
                        .read_to_end(&mut bytes)
                        .map_err(|e| files.io("read", &files.path, e))?;
                    if bytes.iter().all(u8::is_ascii_whitespace) {
                        return Err(QueueError::Corrupt {
                            path: files.path.clone(),
                            message: "the file is empty".into(),
                        });
                    }
                    Doc::parse(bytes, ctx, prev).map_err(|message| QueueError::Corrupt {
                        path: files.path.clone(),
                        message,
                    })?
                }
                None => Doc::new(ctx, ctx.now()),
            };
            *cache = Some(Loaded {
                doc,
                ident,
                _hold: file.filter(|_| cfg!(unix)),
            });
        }
        cache
            .as_mut()
            .ok_or_else(|| QueueError::Invalid("state cache unavailable".into()))
    }

    /// Writes the cached document: temporary file, fsync, rename.
    /// The version it replaces goes to `retired` (see [`JsonBackend::refresh`]).
    /// The file the next state is written to before it is renamed over the state file: with the
    /// state file's mode when there is one (an owner's chmod survives rewrites), else tm's.
    fn create_tmp(files: &Files) -> std::io::Result<File> {
        #[cfg(unix)]
        let existing = {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(&files.path)
                .map(|m| m.permissions().mode() & 0o777)
                .ok()
        };
        #[cfg(not(unix))]
        let existing: Option<u32> = None;
        if existing.is_none() {
            // A leftover from a crash would keep its own mode.
            let _ = fs::remove_file(&files.tmp);
        }
        let f = crate::store::files::options(existing.unwrap_or(files.mode))
            .write(true)
            .create(true)
            .truncate(true)
            .open(&files.tmp)?;
        #[cfg(unix)]
        if let Some(mode) = existing {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        Ok(f)
    }

    fn persist(
        files: &Files,
        loaded: &mut Loaded,
        ctx: &Ctx,
        now: i64,
        retired: &mut Vec<File>,
    ) -> Result<()> {
        loaded
            .doc
            .set_metadata("last_updated", jsontext::str_text(&ctx.iso(now)));
        let mut buf = Vec::with_capacity(loaded.doc.src.len() + 4096);
        loaded.doc.render(&mut buf);
        let write = || -> std::io::Result<File> {
            let mut f = Self::create_tmp(files)?;
            write_early(&mut f, &buf)?;
            f.sync_data()?;
            Ok(f)
        };
        let f = match write() {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&files.tmp);
                return Err(files.io("write", &files.tmp, e));
            }
        };
        if let Err(e) = fs::rename(&files.tmp, &files.path) {
            let _ = fs::remove_file(&files.tmp);
            return Err(files.io("rename over", &files.path, e));
        }
        let meta = f.metadata().map_err(|e| files.io("stat", &files.path, e))?;
        loaded.ident = Some(Ident::of(&meta));
        // Holding the version open pins its inode (see `Ident`). Windows cannot rename over a
        // file that is open, and identifies versions without inodes, so it holds nothing.
        retired.extend(std::mem::replace(
            &mut loaded._hold,
            cfg!(unix).then_some(f),
        ));
        loaded.doc.src = buf;
        Ok(())
    }

    /// Runs `f` on the current state under the lock; writes the state if `f` says it changed it
    /// (or if the file did not exist). On any error the cache is dropped and the file untouched.
    fn write<R>(&mut self, f: impl FnOnce(&mut Doc, &Ctx, i64) -> Result<(R, bool)>) -> Result<R> {
        let (files, ctx) = (&self.files, &self.ctx);
        let mut retired = Vec::new();
        let result = {
            let _held = Self::lock(files, ctx, &mut self.lock_file)?;
            let result =
                Self::refresh(files, ctx, &mut self.cache, &mut retired).and_then(|loaded| {
                    let now = ctx.now();
                    let (r, dirty) = f(&mut loaded.doc, ctx, now)?;
                    if dirty || loaded.ident.is_none() {
                        Self::persist(files, loaded, ctx, now, &mut retired)?;
                    }
                    Ok(r)
                });
            if result.is_err() {
                retired.extend(self.cache.take().and_then(|c| c._hold));
            }
            result
        };
        // Unlocked: other writers go ahead while the replaced versions are closed.
        drop(retired);
        result
    }

    /// Runs `f` on the current state without the lock (renames make every read consistent).
    fn read<R>(&mut self, f: impl FnOnce(&Doc, &Ctx) -> R) -> Result<R> {
        let loaded = Self::refresh(&self.files, &self.ctx, &mut self.cache, &mut Vec::new())?;
        Ok(f(&loaded.doc, &self.ctx))
    }
}

impl Backend for JsonBackend {
    fn create(&mut self, tasks: &[NewTask]) -> Result<Vec<String>> {
        self.write(|doc, ctx, now| Ok((doc.create(ctx, now, tasks)?, !tasks.is_empty())))
    }

    fn claim(&mut self, agent: &str, types: Option<&[String]>) -> Result<Option<Task>> {
        self.write(|doc, ctx, now| {
            let swept = doc.sweep(ctx, now);
            let got = doc.claim(ctx, now, agent, types);
            Ok((
                got.map(|i| doc.entries[i].to_task()),
                swept || got.is_some(),
            ))
        })
    }

    fn claim_many(
        &mut self,
        agent: &str,
        types: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<Task>> {
        self.write(|doc, ctx, now| {
            let swept = doc.sweep(ctx, now);
            let mut got = Vec::new();
            while got.len() < limit {
                match doc.claim(ctx, now, agent, types) {
                    Some(i) => got.push(doc.entries[i].to_task()),
                    None => break,
                }
            }
            let dirty = swept || !got.is_empty();
            Ok((got, dirty))
        })
    }

    fn complete(
        &mut self,
        id: &str,
        agent: &str,
        attempt: Option<u32>,
        status: Status,
        result: Option<&[u8]>,
    ) -> Result<bool> {
        if !status.is_final() {
            return Err(QueueError::Invalid(format!(
                "a task cannot be completed with status {:?}",
                status.as_str()
            )));
        }
        self.write(|doc, ctx, now| {
            let done = doc.finish(
                &ctx.iso(now),
                agent,
                &Completion {
                    id,
                    attempt,
                    status,
                    result,
                },
            )?;
            Ok((done, done))
        })
    }

    fn complete_many(&mut self, agent: &str, items: &[Completion<'_>]) -> Result<Vec<bool>> {
        check_final(items)?;
        self.write(|doc, ctx, now| {
            let now_iso = ctx.iso(now);
            let done = items
                .iter()
                .map(|c| doc.finish(&now_iso, agent, c))
                .collect::<Result<Vec<bool>>>()?;
            let dirty = done.contains(&true);
            Ok((done, dirty))
        })
    }

    fn release(&mut self, id: &str, holder: Holder<'_>) -> Result<bool> {
        self.write(|doc, ctx, now| {
            let i = match holder {
                Holder::Agent { agent, attempt } => doc.held(id, agent, attempt),
                Holder::Anyone => doc
                    .find(id)
                    .filter(|&i| doc.entries[i].status.is(Status::InProgress)),
            };
            let Some(i) = i else {
                return Ok((false, false));
            };
            doc.end_lease(i, &ctx.iso(now));
            Ok((true, true))
        })
    }

    fn extend_lease(&mut self, id: &str, agent: &str, attempt: Option<u32>) -> Result<bool> {
        self.write(|doc, ctx, now| {
            let Some(i) = doc.held(id, agent, attempt) else {
                return Ok((false, false));
            };
            let e = &mut doc.entries[i];
            e.locked_at = Some(ctx.iso(now));
            e.lease_us = Some(now);
            e.text = Text::Dirty;
            Ok((true, true))
        })
    }

    fn cancel(&mut self, id: &str) -> Result<bool> {
        self.write(|doc, ctx, now| {
            let Some(i) = doc
                .find(id)
                .filter(|&i| doc.entries[i].status.is(Status::Pending))
            else {
                return Ok((false, false));
            };
            let now_iso = ctx.iso(now);
            let e = &mut doc.entries[i];
            e.status = St::Known(Status::Cancelled);
            e.completed_at = Some(now_iso.clone());
            e.text = Text::Dirty;
            doc.cancel_waiters(id, &now_iso);
            Ok((true, true))
        })
    }

    fn get(&mut self, id: &str) -> Result<Option<Task>> {
        self.read(|doc, _| doc.find(id).map(|i| doc.entries[i].to_task()))
    }

    fn children(&mut self, id: &str) -> Result<Vec<Task>> {
        self.read(|doc, _| {
            doc.entries
                .iter()
                .filter(|e| e.parent_id.as_deref() == Some(id))
                .map(|e| e.to_task())
                .collect()
        })
    }

    fn list(&mut self, filter: &ListFilter) -> Result<Vec<Task>> {
        self.read(|doc, _| {
            doc.entries
                .iter()
                .filter(|e| {
                    filter
                        .status
                        .as_deref()
                        .is_none_or(|s| e.status.as_str() == s)
                })
                .filter(|e| filter.task_type.as_deref().is_none_or(|t| e.ty == t))
                .take(filter.limit.unwrap_or(usize::MAX))
                .map(|e| e.to_task())
                .collect()
        })
    }

    fn summary(&mut self) -> Result<Summary> {
        self.read(|doc, _| doc.summary())
    }

    fn update_metadata(&mut self, members: &[u8]) -> Result<()> {
        let members = metadata_members(members)?;
        self.write(|doc, _, _| {
            for (k, v) in members {
                doc.set_metadata(&k, v);
            }
            Ok(((), true))
        })
    }

    fn version(&mut self) -> Result<u64> {
        let mut h = DefaultHasher::new();
        match fs::metadata(&self.files.path) {
            Ok(m) => Ident::of(&m).hash(&mut h),
            Err(e) if e.kind() == ErrorKind::NotFound => 0u8.hash(&mut h),
            Err(e) => return Err(self.files.io("stat", &self.files.path, e)),
        }
        Ok(h.finish())
    }

    fn next_expiry(&mut self) -> Result<Option<i64>> {
        self.read(|doc, ctx| {
            doc.entries
                .iter()
                .filter(|e| e.status.is(Status::InProgress))
                .map(|e| {
                    e.lease_us
                        .map_or(i64::MIN, |t| t.saturating_add(ctx.lease_us))
                })
                .min()
        })
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        self.read(|doc, _| doc.to_snapshot())
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.write(|doc, ctx, _| {
            if !doc.entries.is_empty() {
                return Err(QueueError::Invalid(format!(
                    "the destination already holds {} tasks",
                    doc.entries.len()
                )));
            }
            let mut fresh = Doc::from_snapshot(snapshot, ctx);
            if !snapshot.top.iter().any(|(k, _)| k == "workflow_type") {
                fresh.top.insert(
                    0,
                    Top::Other("workflow_type".into(), jsontext::str_text("generic")),
                );
            }
            if fresh.index.len() != fresh.entries.len() {
                return Err(QueueError::Invalid("the source repeats a task id".into()));
            }
            *doc = fresh;
            Ok(((), true))
        })
    }
}

#[cfg(test)]
pub(crate) fn parse_for_test(bytes: &[u8]) -> std::result::Result<Snapshot, String> {
    let ctx = Ctx::new(&Options::default());
    Doc::parse(bytes.to_vec(), &ctx, None).map(|d| d.to_snapshot())
}

/// Parses `new` as the version after `old` (reusing `old`'s entries), checks the index, and
/// returns the state and its rendering.
#[cfg(test)]
pub(crate) fn parse_after_for_test(
    old: &[u8],
    new: &[u8],
) -> std::result::Result<(Snapshot, Vec<u8>), String> {
    let ctx = Ctx::new(&Options::default());
    let prev = Doc::parse(old.to_vec(), &ctx, None)?;
    let mut d = Doc::parse(new.to_vec(), &ctx, Some(prev))?;
    if d.index.len() != d.entries.len() {
        return Err(format!(
            "{} ids indexed for {} entries",
            d.index.len(),
            d.entries.len()
        ));
    }
    for (i, e) in d.entries.iter().enumerate() {
        if d.find(&e.id) != Some(i) {
            return Err(format!("{} is not indexed at {i}", e.id));
        }
    }
    let mut out = Vec::new();
    d.render(&mut out);
    Ok((d.to_snapshot(), out))
}

#[cfg(test)]
pub(crate) fn render_doc_for_test(bytes: &[u8]) -> Vec<u8> {
    let ctx = Ctx::new(&Options::default());
    let mut d = Doc::parse(bytes.to_vec(), &ctx, None).expect("valid");
    let mut out = Vec::new();
    d.render(&mut out);
    out
}
