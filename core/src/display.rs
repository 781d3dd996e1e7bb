//! Compact, one-line `Display` forms of messages, entries and the other values a `Ready` holds,
//! for scenario tests whose expected output is a trace a reviewer reads (core/tests/testdata)
//! and for logs. Formatting only: nothing here changes or decides anything.
//!
//! The notation: `i/t` is the entry (or log position) of index `i` and term `t`; `a->b tN` a
//! message from `a` to `b` carrying term `N`. For example
//! `1->2 t5 AppendEntries prev=4/3 [5/5 6/5 "x"] commit=4`.

use crate::message::{Message, MessageBody};
use crate::raft::{ReadState, Ready, SnapshotAck, SnapshotChunk};
use crate::types::{Entry, HardState, Membership, MembershipChange, SnapshotMeta};
use std::fmt;

/// Bytes of entry data shown before the rest is summarised as a count.
const DATA_SHOWN_BYTES_MAX: usize = 24;

/// Opaque bytes as a quoted, escaped string, cut after `DATA_SHOWN_BYTES_MAX` bytes.
struct Data<'a>(&'a [u8]);

impl fmt::Display for Data<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(DATA_SHOWN_BYTES_MAX)];
        f.write_str("\"")?;
        for b in shown {
            write!(f, "{}", std::ascii::escape_default(*b))?;
        }
        f.write_str("\"")?;
        if shown.len() < self.0.len() {
            write!(f, "+{}B", self.0.len() - shown.len())?;
        }
        Ok(())
    }
}

/// Ids as `1,2,3`.
fn id_list<T: fmt::Display>(ids: impl IntoIterator<Item = T>) -> String {
    ids.into_iter().map(|id| id.to_string()).collect::<Vec<_>>().join(",")
}

/// ` next=N`, or nothing for `u64::MAX`, which a follower sends when it needs no more chunks.
struct NextSeq(u64);

impl fmt::Display for NextSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            u64::MAX => Ok(()),
            n => write!(f, " next={n}"),
        }
    }
}

/// Entries as `[1/1 2/1 "x"]`.
struct Entries<'a>(&'a [Entry]);

impl fmt::Display for Entries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{e}")?;
        }
        f.write_str("]")
    }
}

fn granted(g: bool) -> &'static str {
    if g {
        "granted"
    } else {
        "rejected"
    }
}

/// `voters=(1,2,3) learners=(4) v2/t3`: the members, and the version that made them.
impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "voters=({})", id_list(&self.voters))?;
        if !self.learners.is_empty() {
            write!(f, " learners=({})", id_list(&self.learners))?;
        }
        write!(f, " v{}/t{}", self.version, self.made_in)
    }
}

/// `add-learner 4`, `promote 4`, `remove 2`.
impl fmt::Display for MembershipChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MembershipChange::AddLearner { id, addr } => write!(f, "add-learner {id} {addr:?}"),
            MembershipChange::Promote { id } => write!(f, "promote {id}"),
            MembershipChange::Remove { id } => write!(f, "remove {id}"),
        }
    }
}

/// `3/2` for a no-op, `3/2 "data"` with data, then `{voters=(1,2) v1/t2}` for a membership
/// change and `@ms` when the entry carries a time.
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.term)?;
        if !self.data.is_empty() {
            write!(f, " {}", Data(&self.data))?;
        }
        if let Some(m) = &self.membership {
            write!(f, " {{{m}}}")?;
        }
        if self.time != 0 {
            write!(f, " @{}", self.time)?;
        }
        Ok(())
    }
}

/// `3/2`, and `@ms` when it carries a time.
impl fmt::Display for SnapshotMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.term)?;
        if self.time != 0 {
            write!(f, " @{}", self.time)?;
        }
        Ok(())
    }
}

/// `term=3 vote=1` (`vote=none`), and `recovering` while it is.
impl fmt::Display for HardState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "term={} vote=", self.term)?;
        match self.voted_for {
            Some(id) => write!(f, "{id}")?,
            None => f.write_str("none")?,
        }
        if self.recovering {
            f.write_str(" recovering")?;
        }
        Ok(())
    }
}

impl fmt::Display for MessageBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self {
            MessageBody::PreVote { last_log_index, last_log_term } => {
                write!(f, " last={last_log_index}/{last_log_term}")
            }
            MessageBody::PreVoteResponse { granted: g } => write!(f, " {}", granted(*g)),
            MessageBody::RequestVote { last_log_index, last_log_term, transfer } => {
                write!(f, " last={last_log_index}/{last_log_term}")?;
                if *transfer {
                    f.write_str(" transfer")?;
                }
                Ok(())
            }
            MessageBody::RequestVoteResponse { granted: g, clock_ms } => {
                write!(f, " {}", granted(*g))?;
                if *clock_ms != 0 {
                    write!(f, " clock={clock_ms}")?;
                }
                Ok(())
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                write!(f, " prev={prev_log_index}/{prev_log_term}")?;
                if !entries.is_empty() {
                    write!(f, " {}", Entries(entries))?;
                }
                write!(f, " commit={leader_commit}")
            }
            MessageBody::AppendEntriesResponse { success: true, index, .. } => {
                write!(f, " ok index={index}")
            }
            MessageBody::AppendEntriesResponse { success: false, index, hint, hint_term } => {
                write!(f, " reject index={index} hint={hint}/{hint_term}")
            }
            MessageBody::Heartbeat { commit, read_round } => {
                write!(f, " commit={commit} round={read_round}")
            }
            MessageBody::HeartbeatResponse { read_round, last_log_index, clock_ms } => {
                write!(f, " round={read_round} last={last_log_index}")?;
                if *clock_ms != 0 {
                    write!(f, " clock={clock_ms}")?;
                }
                Ok(())
            }
            MessageBody::Propose { proposals } => {
                for (id, data) in proposals {
                    write!(f, " {id}:{}", Data(data))?;
                }
                Ok(())
            }
            MessageBody::ReadIndex { ids } => write!(f, " ids=({})", id_list(ids)),
            MessageBody::ReadIndexResponse { ids, index } => {
                write!(f, " ids=({}) index={index}", id_list(ids))
            }
            MessageBody::SnapshotChunk { meta, seq, data, last } => {
                write!(f, " snap={meta} seq={seq} {}B", data.len())?;
                if *last {
                    f.write_str(" last")?;
                }
                Ok(())
            }
            MessageBody::SnapshotAck { meta, next_seq, finished } => {
                write!(f, " snap={meta}{}", NextSeq(*next_seq))?;
                if *finished {
                    f.write_str(" finished")?;
                }
                Ok(())
            }
            MessageBody::ProposeMembership { id, change, data, based_on } => {
                write!(f, " id={id} {change} on=v{}/t{}", based_on.0, based_on.1)?;
                if !data.is_empty() {
                    write!(f, " {}", Data(data))?;
                }
                Ok(())
            }
            MessageBody::MembershipRefused { id, pending } => {
                write!(f, " id={id}")?;
                if *pending {
                    f.write_str(" pending")?;
                }
                Ok(())
            }
            MessageBody::TransferLeader { to } => write!(f, " to={to}"),
            MessageBody::TimeoutNow => Ok(()),
            MessageBody::StateProbe { nonce } => write!(f, " nonce={nonce:x}"),
            MessageBody::StateProbeResponse { nonce, last_index, last_term, voters, addrs } => {
                write!(f, " nonce={nonce:x} last={last_index}/{last_term}")?;
                write!(f, " voters=({})", id_list(voters))?;
                for (id, addr) in addrs {
                    write!(f, " {id}={addr:?}")?;
                }
                Ok(())
            }
            MessageBody::ProposalsRefused { ids } => write!(f, " ids=({})", id_list(ids)),
        }
    }
}

/// `1->2 t5 AppendEntries prev=4/3 [5/5 6/5] commit=4`.
impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}->{} t{} {}", self.from, self.to, self.term, self.body)
    }
}

/// `from 1 snap=5/2 seq=0 12B last`.
impl fmt::Display for SnapshotChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "from {} snap={} seq={} {}B", self.from, self.meta, self.seq, self.data.len())?;
        if self.last {
            f.write_str(" last")?;
        }
        Ok(())
    }
}

/// `from 2 snap=5/2 next=3`, and `finished` once the follower needs no more.
impl fmt::Display for SnapshotAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "from {} snap={}{}", self.from, self.meta, NextSeq(self.next_seq))?;
        if self.finished {
            f.write_str(" finished")?;
        }
        Ok(())
    }
}

/// `id=7 index=5`: serve read 7 once applied up to index 5.
impl fmt::Display for ReadState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "id={} index={}", self.id, self.index)
    }
}

/// One line per kind of work, in the order the runtime must handle them (see `Ready`), each
/// present only when there is such work; messages one per line, indented. An empty `Ready`
/// shows as `<empty>`. Every line ends with a newline.
impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "<empty>");
        }
        if let Some(meta) = &self.install_snapshot {
            writeln!(f, "InstallSnapshot {meta}")?;
        }
        if let Some(hs) = &self.hard_state {
            writeln!(f, "HardState {hs}")?;
        }
        if let Some((from, entries)) = &self.append {
            writeln!(f, "Append from={from} {}", Entries(entries))?;
        }
        if !self.messages.is_empty() {
            writeln!(f, "Messages:")?;
            for m in &self.messages {
                writeln!(f, "  {m}")?;
            }
        }
        if !self.committed.is_empty() {
            writeln!(f, "Committed {}", Entries(&self.committed))?;
        }
        if let Some(meta) = &self.compact {
            writeln!(f, "Compact {meta}")?;
        }
        for (to, meta) in &self.send_snapshots {
            writeln!(f, "SendSnapshot to={to} snap={meta}")?;
        }
        for ack in &self.snapshot_acks {
            writeln!(f, "SnapshotAck {ack}")?;
        }
        for chunk in &self.snapshot_chunks {
            writeln!(f, "SnapshotChunk {chunk}")?;
        }
        for r in &self.reads {
            writeln!(f, "Read {r}")?;
        }
        for (id, why) in &self.rejected {
            writeln!(f, "Rejected id={id} {why:?}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LogIndex, NodeId, Term};

    fn m(body: MessageBody) -> Message {
        Message { from: NodeId(1), to: NodeId(2), term: Term(5), body }
    }

    #[test]
    fn an_append_shows_its_position_entries_and_commit_on_one_line() {
        let entries = vec![
            Entry::new(LogIndex(5), Term(5), Vec::new()),
            Entry::new(LogIndex(6), Term(5), b"x=1".to_vec()),
        ];
        let body = MessageBody::AppendEntries {
            prev_log_index: LogIndex(4),
            prev_log_term: Term(3),
            entries,
            leader_commit: LogIndex(4),
        };
        assert_eq!(
            m(body).to_string(),
            "1->2 t5 AppendEntries prev=4/3 [5/5 6/5 \"x=1\"] commit=4"
        );
        let reject = MessageBody::AppendEntriesResponse {
            success: false,
            index: LogIndex(10),
            hint: LogIndex(7),
            hint_term: Term(3),
        };
        assert_eq!(m(reject).to_string(), "1->2 t5 AppendEntriesResponse reject index=10 hint=7/3");
    }

    #[test]
    fn entry_data_is_escaped_and_cut_and_a_membership_shows_its_members() {
        let mut e = Entry::new(LogIndex(3), Term(2), vec![b'a'; 30]);
        assert_eq!(e.to_string(), format!("3/2 \"{}\"+6B", "a".repeat(24)));
        e.data = vec![0, b'"'];
        e.membership = Some(Membership {
            voters: [NodeId(1), NodeId(2)].into(),
            learners: [NodeId(4)].into(),
            version: 1,
            made_in: Term(2),
            ..Membership::default()
        });
        assert_eq!(e.to_string(), "3/2 \"\\x00\\\"\" {voters=(1,2) learners=(4) v1/t2}");
    }

    #[test]
    fn a_ready_lists_only_the_work_it_holds_in_handling_order() {
        assert_eq!(Ready::default().to_string(), "<empty>\n");
        let rd = Ready {
            hard_state: Some(HardState {
                term: Term(1),
                voted_for: Some(NodeId(1)),
                recovering: false,
            }),
            messages: vec![m(MessageBody::TimeoutNow)],
            reads: vec![ReadState { id: 7, index: LogIndex(3) }],
            ..Ready::default()
        };
        assert_eq!(
            rd.to_string(),
            "HardState term=1 vote=1\nMessages:\n  1->2 t5 TimeoutNow\nRead id=7 index=3\n"
        );
    }
}
