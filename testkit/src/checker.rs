//! A linearizability checker for histories of a key-value store, one register per key.
//!
//! The chaos driver records, for every operation a client issued, when it was invoked and, if an
//! answer came back, when it completed. This module decides whether such a history could have
//! come from a single atomic register per key: whether every operation can be given a point in
//! time between its invocation and its completion so that, in the order of those points, each
//! read returns the value of the latest write before it (or the initial value).
//!
//! # Keys are independent
//!
//! Linearizability is compositional (Herlihy and Wing's locality): a history is linearizable
//! exactly when its restriction to every key is. [`check_keys`] therefore splits a history by
//! key and checks each part on its own with [`check_register`], which keeps every search small.
//!
//! # The search
//!
//! [`check_register`] is the Wing–Gong algorithm with Lowe's memoisation, as in Knossos and
//! Porcupine. Each operation becomes a call event at its invocation time and a return event at
//! its completion time, and the events are sorted by time into a doubly linked list. The rule
//! for equal times is that **calls sort before returns**: an operation that completes at `t`
//! and one invoked at the same `t` overlap and may be ordered either way; only a completion
//! strictly before an invocation forces an order. This is the permissive choice: timestamps
//! from the driver's clock are coarse, and a checker must never report an ordering the clock
//! could not actually see.
//!
//! The search walks the list from the front. At a call it tries to *lift* the operation, making
//! it the next one in the linearization: a write always succeeds and sets the register, a read
//! succeeds only if it returns the register's value. A lifted operation leaves the list with
//! its return event, and the walk starts again from the front. Reaching a return event means
//! that operation had to be linearized already, so the search backtracks: it puts back the last
//! lifted operation and tries the next call after it. The history is linearizable when the list
//! empties, and not when the search must backtrack with nothing lifted.
//!
//! The cache holds every (set of lifted operations, register value) pair reached so far; a pair
//! seen before leads to the same futures, so it is not explored twice. Lifted sets are bitsets
//! and register values are interned to small integers. A register value that no remaining read
//! returns is *dead*, and all dead values share one cache entry, since no future can tell them
//! apart. Three rules, each proved by rearranging a linearization, remove most of the
//! branching (see `search`): a read that fits the register now is taken at once and alone;
//! so is a write of a dead value onto a dead register; and an unknown write is only tried
//! right before a read of its value. The cache is bounded by [`MAX_SEARCH_STATES`]: a search
//! that would grow past it stops and reports [`Outcome::Inconclusive`] rather than running for
//! hours or exhausting memory. The search is exponential in the worst case (the problem is
//! NP-complete); what makes it slow is many clients overlapping all the time while a violation
//! sits late in a history, because every interleaving before it must be ruled out.
//!
//! # Operations of unknown outcome
//!
//! A read that got no answer tells nothing and is dropped. A write that got no answer may or
//! may not have taken effect, at any time after its invocation. Which of the three cases
//! applies depends on the reads of its value; each rewrite is exact (it changes no verdict):
//!
//! - nobody read its value: it is dropped. Linearizing it last is always possible and
//!   unobservable, and removing it from any linearization leaves every read valid.
//! - its value is read, and no other write (nor the initial value) carries it: those reads can
//!   only have read it, so it took effect before the first of them completed, and its return
//!   event is placed there, as if it had completed then. The chaos driver writes unique
//!   values, so this is the common case.
//! - otherwise (typically a delete): it is *optional*. Its return event is placed at the last
//!   completion of a read of its value, after which taking effect is unobservable; when the
//!   walk reaches that event with the write still pending, the write is dropped instead of
//!   forcing a backtrack.
//!
//! # Reporting a violation
//!
//! A violation is reported with the smallest window we can find cheaply, by greedy delta
//! debugging (Zeller's ddmin, complement steps only): remove a chunk of operations, keep the
//! removal if what is left is still not linearizable, halve the chunks when no removal works,
//! and stop when not a single operation can be removed. One rule keeps the window honest:
//! with every read, a window keeps every write of the value it returned that was invoked before
//! the read completed — every write it may have read from — so removing a write also removes
//! the reads that may have read it. Restricting any linearization of the full history to such
//! a window gives a linearization of the window (each read keeps the write it read from, and no
//! write in between appears from nowhere), so a window that fails on its own proves the full
//! history fails. Without the rule, dropping a write would turn a fine read into a stale one,
//! and the window would blame innocent operations. The result is *1-minimal* under that rule:
//! removing any one operation (with the reads that may have read it) makes the window
//! linearizable. A read of a value that nobody wrote is reported alone, and a read of a value
//! written only after it completed comes with those writes. Shrinking has its own budget,
//! [`MAX_SHRINK_STATES`]; when it runs out the window is reported as it stands, and the
//! explanation says it may not be minimal.
//!
//! The window's explanation gives the longest order of its operations the search could build
//! and the register's value after it: the operation that "should" come next is the culprit.
//! [`Violation`]'s `Display` prints it with one line per operation:
//!
//! ```text
//! not linearizable: no order of these 3 operations respects ... the longest valid order is
//! [client 1 write "x", client 2 write "y"], leaving the register "y", and none of the other
//! operations can follow it; removing any one operation ... makes the rest linearizable
//!   client 1    [100..110]               write "x"
//!   client 2    [120..130]               write "y"
//!   client 3    [140..150]               read -> "x"
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use dsm::escape;

/// The most (lifted set, register value) states one search may cache. Past it the search stops
/// with [`Outcome::Inconclusive`]. A state of a 1000-operation history takes about 200 bytes,
/// so the bound keeps one search under roughly 200 MB; linearizable histories from a handful
/// of concurrent clients need only a few states per operation.
pub const MAX_SEARCH_STATES: usize = 1_000_000;

/// The most states all the searches of one violation's shrinking may explore together. When
/// they run out, the window found so far is reported, marked as possibly not minimal.
pub const MAX_SHRINK_STATES: usize = 4_000_000;

/// How many operations of the longest valid order an explanation lists; earlier ones are
/// only counted, so that a window that could not be shrunk still explains itself in a line.
const MAX_EXPLAINED_OPS: usize = 8;

/// How many bytes of a value reports show; longer values are cut and marked with `...`.
const MAX_SHOWN_VALUE: usize = 32;

/// A register value: `None` is absent (never written, or deleted; a read found nothing).
pub type Value = Option<Vec<u8>>;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// A read that returned `result` (`None`: not found).
    Read { result: Value },
    /// A write of `value`; a delete is a write of `None`.
    Write { value: Value },
}

/// One operation of one client on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Who issued it; used only in reports.
    pub client: u64,
    /// When it was invoked, in any unit, as long as one clock is used for the whole history.
    pub invoke: u64,
    /// When its answer arrived; `None` when the outcome is unknown (no answer, or a timeout).
    /// A completion before the invocation is taken to equal the invocation.
    pub complete: Option<u64>,
    /// What it did.
    pub kind: OpKind,
}

impl Op {
    /// A read by `client` that returned `result`; `complete: None` for an unanswered read.
    pub fn read(client: u64, invoke: u64, complete: Option<u64>, result: Value) -> Op {
        Op { client, invoke, complete, kind: OpKind::Read { result } }
    }

    /// A write of `value` (`None`: a delete) by `client`; `complete: None` for a write of
    /// unknown outcome.
    pub fn write(client: u64, invoke: u64, complete: Option<u64>, value: Value) -> Op {
        Op { client, invoke, complete, kind: OpKind::Write { value } }
    }

    fn is_read(&self) -> bool {
        matches!(self.kind, OpKind::Read { .. })
    }

    /// The completion time, never before the invocation.
    fn completion(&self) -> Option<u64> {
        self.complete.map(|c| c.max(self.invoke))
    }
}

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The history is linearizable.
    Ok,
    /// The history is not linearizable; the violation holds a small window that shows it.
    Violation(Violation),
    /// The search ran out of its budget ([`MAX_SEARCH_STATES`]); the message says how far it got.
    Inconclusive(String),
}

/// A non-linearizable window of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The operations of the window, ordered by invocation time. The window on its own is
    /// not linearizable.
    pub window: Vec<Op>,
    /// Why, in words.
    pub explanation: String,
}

/// Checks one key's history, starting from the register value `initial` (usually `None`).
pub fn check_register(initial: Value, history: &[Op]) -> Outcome {
    // Unanswered reads say nothing; everything below sees only the rest.
    let mut ops: Vec<Op> =
        history.iter().filter(|op| !(op.is_read() && op.complete.is_none())).cloned().collect();
    ops.sort_by_key(|op| (op.invoke, op.completion().unwrap_or(u64::MAX)));

    if let Some((read, result)) = read_of_unwritten_value(&initial, &ops) {
        let explanation = format!(
            "read by client {} returned {}, which no write in the history wrote and which is not \
             the initial value",
            read.client,
            show_value(result),
        );
        return Outcome::Violation(Violation { window: vec![read.clone()], explanation });
    }

    let prepared = prepare(&initial, &ops);
    match search(&prepared, MAX_SEARCH_STATES, false).0 {
        Search::Linearizable => Outcome::Ok,
        Search::Exhausted => Outcome::Inconclusive(format!(
            "gave up after {MAX_SEARCH_STATES} search states on {} operations",
            ops.len()
        )),
        Search::Violation { .. } => Outcome::Violation(shrink(&initial, ops)),
    }
}

/// Checks a history of many keys, each key independently from an absent initial value.
/// Returns every key whose history is not known to be linearizable (a violation or an
/// inconclusive search), ordered by key; an empty result means the whole history is
/// linearizable.
pub fn check_keys(history: &[(String, Op)]) -> Vec<(String, Outcome)> {
    let mut by_key: BTreeMap<&str, Vec<Op>> = BTreeMap::new();
    for (key, op) in history {
        by_key.entry(key.as_str()).or_default().push(op.clone());
    }
    by_key
        .into_iter()
        .filter_map(|(key, ops)| match check_register(None, &ops) {
            Outcome::Ok => None,
            outcome => Some((key.to_string(), outcome)),
        })
        .collect()
}

/// The first answered read whose result is neither the initial value nor written by any op,
/// with that result.
fn read_of_unwritten_value<'a>(initial: &Value, ops: &'a [Op]) -> Option<(&'a Op, &'a Value)> {
    let written: HashSet<&Value> = ops
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::Write { value } => Some(value),
            OpKind::Read { .. } => None,
        })
        .chain(std::iter::once(initial))
        .collect();
    ops.iter().find_map(|op| match &op.kind {
        OpKind::Read { result } if op.complete.is_some() && !written.contains(result) => Some((op, result)),
        _ => None,
    })
}

/// A register value interned to a small integer, so search states hash and compare cheaply.
type ValueId = u32;

/// What lifting an operation does to the register.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Valid only when the register holds this value; leaves it unchanged.
    Read(ValueId),
    /// Always valid; sets the register to this value.
    Write(ValueId),
}

/// An operation as the search sees it.
#[derive(Debug, Clone)]
struct SearchOp {
    /// Its index in the slice given to [`prepare`].
    source: usize,
    invoke: u64,
    /// When its return event is. For an optional operation, the time after which taking
    /// effect would be unobservable.
    complete: u64,
    /// An unknown write that may be left out: at its return event it is dropped, not required.
    optional: bool,
    step: Step,
}

/// A history ready for [`search`].
struct Prepared {
    initial: ValueId,
    ops: Vec<SearchOp>,
    /// The interned values, indexed by [`ValueId`], for explanations.
    values: Vec<Value>,
}

/// Interns values, drops unanswered reads and applies the two rewrites of unknown writes that
/// the module documentation describes.
fn prepare(initial: &Value, ops: &[Op]) -> Prepared {
    let mut interner = Interner::default();
    let initial_id = interner.intern(initial);

    // For every value: how many writes carry it, and the earliest and latest completions of
    // the reads that returned it.
    let mut writers: HashMap<&Value, usize> = HashMap::new();
    let mut reads_done: HashMap<&Value, (u64, u64)> = HashMap::new();
    for op in ops {
        match (&op.kind, op.completion()) {
            (OpKind::Write { value }, _) => *writers.entry(value).or_default() += 1,
            (OpKind::Read { result }, Some(done)) => {
                let (first, last) = reads_done.entry(result).or_insert((done, done));
                *first = (*first).min(done);
                *last = (*last).max(done);
            }
            (OpKind::Read { .. }, None) => {}
        }
    }

    let mut search_ops = Vec::with_capacity(ops.len());
    for (source, op) in ops.iter().enumerate() {
        let (step, complete, optional) = match (&op.kind, op.completion()) {
            (OpKind::Read { .. }, None) => continue,
            (OpKind::Read { result }, Some(done)) => (Step::Read(interner.intern(result)), done, false),
            (OpKind::Write { value }, Some(done)) => (Step::Write(interner.intern(value)), done, false),
            (OpKind::Write { value }, None) => {
                let Some(&(first, last)) = reads_done.get(value) else {
                    // Nobody read what it wrote: it changes no verdict.
                    continue;
                };
                let step = Step::Write(interner.intern(value));
                if writers.get(value) == Some(&1) && value != initial {
                    // Its reads can only have read it: it took effect before the first of them
                    // completed.
                    (step, first.max(op.invoke), false)
                } else {
                    // Past the last read of its value, taking effect is the same as not.
                    (step, last.max(op.invoke), true)
                }
            }
        };
        search_ops.push(SearchOp { source, invoke: op.invoke, complete, optional, step });
    }
    Prepared { initial: initial_id, ops: search_ops, values: interner.values }
}

/// Gives every distinct value a [`ValueId`].
#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<&'a Value, ValueId>,
    values: Vec<Value>,
}

impl<'a> Interner<'a> {
    fn intern(&mut self, value: &'a Value) -> ValueId {
        let values = &mut self.values;
        *self.ids.entry(value).or_insert_with(|| {
            values.push(value.clone());
            // A history has far fewer than 2^32 distinct values; saturating keeps this total.
            ValueId::try_from(values.len() - 1).unwrap_or(ValueId::MAX)
        })
    }
}

/// The result of one search.
enum Search {
    Linearizable,
    /// Not linearizable. When traced, `longest` is the longest valid order the search built
    /// (indices into the prepared ops) and `register` the register's value after it.
    Violation {
        longest: Vec<usize>,
        register: ValueId,
    },
    /// The state budget ran out.
    Exhausted,
}

/// "No node" in the event list.
const NIL: usize = usize::MAX;
/// The list's head sentinel.
const HEAD: usize = 0;

/// One event of the list: the call or the return of an operation.
#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// The node of the other event of the same operation.
    partner: usize,
}

/// The doubly linked event list of the Wing–Gong search. Node 0 is the head sentinel.
struct EventList {
    events: Vec<Event>,
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl EventList {
    fn new(ops: &[SearchOp]) -> EventList {
        // (time, rank, op): calls rank before returns at equal times, so operations that touch
        // at one instant overlap (see the module documentation). The returns of optional writes
        // rank last, so every read of their value has returned before they are dropped.
        const CALL: u8 = 0;
        const RETURN: u8 = 1;
        const OPTIONAL_RETURN: u8 = 2;
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            order.push((op.invoke, CALL, i));
            let rank = if op.optional { OPTIONAL_RETURN } else { RETURN };
            order.push((op.complete, rank, i));
        }
        order.sort_unstable();

        let mut events = vec![Event { op: NIL, is_call: false, partner: NIL }];
        let mut call_node = vec![NIL; ops.len()];
        for (_, rank, i) in order {
            let node = events.len();
            let is_call = rank == CALL;
            let partner = if is_call { NIL } else { call_node[i] };
            events.push(Event { op: i, is_call, partner });
            if is_call {
                call_node[i] = node;
            } else if let Some(call) = events.get_mut(partner) {
                call.partner = node;
            }
        }
        let len = events.len();
        let next = (0..len).map(|n| if n + 1 < len { n + 1 } else { NIL }).collect();
        let prev = (0..len).map(|n| n.wrapping_sub(1)).collect();
        EventList { events, next, prev }
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    /// Removes a call and its return from the list.
    fn lift(&mut self, call: usize, ret: usize) {
        self.unlink(call);
        self.unlink(ret);
    }

    /// Undoes [`EventList::lift`]; lifts and unlifts nest, so the neighbours are intact.
    fn unlift(&mut self, call: usize, ret: usize) {
        self.relink(ret);
        self.relink(call);
    }
}

/// The Wing–Gong–Lowe search over a prepared history, caching at most `budget` states. With
/// `trace`, a violation carries the longest valid order found. Also returns how many states
/// were cached.
///
/// Besides the cache, three rules cut the branching; each holds because a linearization that
/// breaks it can be rearranged into one that keeps it:
///
/// - a read that may come next and returns the register's value is lifted at once, and
///   nothing else is tried in that state (moving a read earlier, to where the register already
///   holds its value, invalidates nothing: reads change nothing);
/// - when the register's value is dead (no read left returns it), a write of a dead value that
///   may come next is lifted at once, alone, for the same reason;
/// - an optional write is lifted only when a read of its value may come right after it, since
///   a write whose value nobody reads before the next write might as well be left out.
fn search(history: &Prepared, budget: usize, trace: bool) -> (Search, usize) {
    let mut searcher = Searcher::new(history, trace);
    let verdict = searcher.run(budget);
    (verdict, searcher.cache.len())
}

/// The state of one [`search`].
struct Searcher<'a> {
    ops: &'a [SearchOp],
    list: EventList,
    /// The lifted operations (linearized, or dropped if optional), as a bitset.
    lifted: Vec<u64>,
    /// How many reads not lifted yet return each value. A register value that no such read
    /// returns is dead: nothing can observe it before the next write.
    unread: Vec<u32>,
    /// The lifted operations, in order.
    stack: Vec<Frame>,
    register: ValueId,
    /// Every (lifted set, register) state reached so far, with dead registers as [`DEAD`].
    cache: HashSet<(Vec<u64>, ValueId)>,
    trace: bool,
    /// With `trace`: the longest valid order seen, and the register after it.
    longest: Vec<usize>,
    longest_register: ValueId,
}

/// How a move went.
enum Move {
    /// Lifted; the search is in a new state.
    Made,
    /// It leads to a state already explored (and failed).
    Cached,
    /// The state budget ran out.
    OverBudget,
}

impl<'a> Searcher<'a> {
    fn new(history: &'a Prepared, trace: bool) -> Searcher<'a> {
        let ops = &history.ops[..];
        let mut unread = vec![0u32; history.values.len()];
        for op in ops {
            if let Step::Read(v) = op.step {
                unread[v as usize] += 1;
            }
        }
        Searcher {
            ops,
            list: EventList::new(ops),
            lifted: vec![0u64; ops.len().div_ceil(64).max(1)],
            unread,
            stack: Vec::new(),
            register: history.initial,
            cache: HashSet::new(),
            trace,
            longest: Vec::new(),
            longest_register: history.initial,
        }
    }

    fn dead(&self, v: ValueId) -> bool {
        self.unread.get(v as usize).is_none_or(|&n| n == 0)
    }

    /// The calls that may come next: those before the first pending return.
    fn callable(&self) -> impl Iterator<Item = usize> + '_ {
        let mut node = self.list.next[HEAD];
        std::iter::from_fn(move || {
            let this = node;
            if this == NIL || !self.list.events[this].is_call {
                return None;
            }
            node = self.list.next[this];
            Some(this)
        })
    }

    fn step_of(&self, node: usize) -> Step {
        self.ops[self.list.events[node].op].step
    }

    /// A move that must be made now, alone (the first two rules of [`search`]).
    fn forced_move(&self) -> Option<usize> {
        let register_dead = self.dead(self.register);
        self.callable().find(|&node| match self.step_of(node) {
            Step::Read(v) => v == self.register,
            Step::Write(v) => register_dead && self.dead(v) && !self.ops[self.list.events[node].op].optional,
        })
    }

    /// Whether an optional write of `v` is worth lifting now (the third rule of [`search`]).
    fn worth_writing(&self, v: ValueId) -> bool {
        v != self.register
            && self.callable().any(|node| matches!(self.step_of(node), Step::Read(r) if r == v))
    }

    /// Lifts the operation of `node` (a call, or an optional write's return to drop it).
    fn lift(&mut self, node: usize, forced: bool, budget: usize) -> Move {
        let event = self.list.events[node];
        let op = &self.ops[event.op];
        let after = match (event.is_call, op.step) {
            (true, Step::Write(v)) => v,
            _ => self.register,
        };
        let (word, bit) = (event.op / 64, 1u64 << (event.op % 64));
        self.lifted[word] |= bit;
        set_unread(&mut self.unread, op.step, -1);
        // All dead values are alike to the future, so they share cache entries.
        let key = if self.dead(after) { DEAD } else { after };
        if !self.cache.insert((self.lifted.clone(), key)) {
            self.lifted[word] &= !bit;
            set_unread(&mut self.unread, op.step, 1);
            return Move::Cached;
        }
        if self.cache.len() > budget {
            return Move::OverBudget;
        }
        let (call, ret) = if event.is_call { (node, event.partner) } else { (event.partner, node) };
        self.stack.push(Frame { call, before: self.register, forced, dropped: !event.is_call });
        self.register = after;
        self.list.lift(call, ret);
        if self.trace && self.stack.len() > self.longest.len() {
            self.longest =
                self.stack.iter().filter(|f| !f.dropped).map(|f| self.list.events[f.call].op).collect();
            self.longest_register = self.register;
        }
        Move::Made
    }

    /// Undoes lifts up to and including the last one that had alternatives, and returns the
    /// node where the walk resumes; `None` when there is nothing left to undo.
    fn backtrack(&mut self) -> Option<usize> {
        loop {
            let frame = self.stack.pop()?;
            let undone = self.list.events[frame.call];
            self.list.unlift(frame.call, undone.partner);
            self.lifted[undone.op / 64] &= !(1u64 << (undone.op % 64));
            set_unread(&mut self.unread, self.ops[undone.op].step, 1);
            self.register = frame.before;
            if !frame.forced {
                return Some(self.list.next[frame.call]);
            }
        }
    }

    fn run(&mut self, budget: usize) -> Search {
        // `None`: a new state was just entered, so look for a forced move first.
        let mut walk: Option<usize> = None;
        loop {
            let node = match walk {
                Some(node) => node,
                None => {
                    if self.list.next[HEAD] == NIL {
                        return Search::Linearizable;
                    }
                    if let Some(node) = self.forced_move() {
                        match self.lift(node, true, budget) {
                            Move::Made => continue,
                            Move::OverBudget => return Search::Exhausted,
                            Move::Cached => match self.backtrack() {
                                Some(next) => {
                                    walk = Some(next);
                                    continue;
                                }
                                None => return self.violation(),
                            },
                        }
                    }
                    self.list.next[HEAD]
                }
            };
            let event = self.list.events[node];
            let op = &self.ops[event.op];
            // Whether to try lifting this node, and whether that is the last option here.
            let attempt = match (event.is_call, op.step) {
                // Reads that fit were taken by the forced move; the others cannot go now.
                (true, Step::Read(_)) => None,
                (true, Step::Write(v)) if op.optional => self.worth_writing(v).then_some(false),
                (true, Step::Write(_)) => Some(false),
                // An optional write not taken by its deadline is dropped: the last option.
                (false, _) if op.optional => Some(true),
                // This operation had to be linearized by now.
                (false, _) => {
                    match self.backtrack() {
                        Some(next) => walk = Some(next),
                        None => return self.violation(),
                    }
                    continue;
                }
            };
            let moved = match attempt {
                None => Move::Cached,
                Some(last) => match self.lift(node, last, budget) {
                    Move::Cached if last => match self.backtrack() {
                        Some(next) => {
                            walk = Some(next);
                            continue;
                        }
                        None => return self.violation(),
                    },
                    moved => moved,
                },
            };
            match moved {
                Move::Made => walk = None,
                Move::Cached => walk = Some(self.list.next[node]),
                Move::OverBudget => return Search::Exhausted,
            }
        }
    }

    fn violation(&mut self) -> Search {
        Search::Violation { longest: std::mem::take(&mut self.longest), register: self.longest_register }
    }
}

/// The cache's stand-in for every dead register value.
const DEAD: ValueId = ValueId::MAX;

/// One lifted operation on the search stack.
struct Frame {
    /// Its call node.
    call: usize,
    /// The register's value before it.
    before: ValueId,
    /// Whether it was lifted as the only move worth trying (see [`search`]), so backtracking
    /// past it tries nothing else in its state.
    forced: bool,
    /// Whether it is an optional write that was left out rather than linearized.
    dropped: bool,
}

/// Counts a read in (`+1`, unlifted) or out (`-1`, lifted) of [`search`]'s unread tally.
fn set_unread(unread: &mut [u32], step: Step, delta: i32) {
    if let Step::Read(v) = step {
        if let Some(n) = unread.get_mut(v as usize) {
            *n = n.saturating_add_signed(delta);
        }
    }
}

/// For every operation of a history, the writes a window holding it must also hold: for a
/// read, every write of the value it returned that was invoked before the read completed (the
/// only writes it can have read from). When there is none, the read came from the future, and
/// all writes of that value are kept, so the window shows where the value came from. Writes
/// need nothing.
fn required_writes(ops: &[Op]) -> Vec<Vec<usize>> {
    let mut writes_of: HashMap<&Value, Vec<usize>> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let OpKind::Write { value } = &op.kind {
            writes_of.entry(value).or_default().push(i);
        }
    }
    ops.iter()
        .map(|op| match (&op.kind, op.completion()) {
            (OpKind::Read { result }, Some(done)) => {
                let all = writes_of.get(result).map_or(&[][..], |w| &w[..]);
                let possible: Vec<usize> = all.iter().copied().filter(|&w| ops[w].invoke <= done).collect();
                if possible.is_empty() {
                    all.to_vec()
                } else {
                    possible
                }
            }
            _ => Vec::new(),
        })
        .collect()
}

/// The part of `candidate` (indices into `ops`) that can serve as a window: its reads whose
/// possible writes are not all in `candidate` are left out. Any linearization of `ops`,
/// restricted to such a window, is one of the window, because each read keeps the write it
/// read from and no write in between appears from nowhere; so a window that is not
/// linearizable is evidence against `ops`.
fn closed_window(ops_len: usize, required: &[Vec<usize>], candidate: &[usize]) -> Vec<usize> {
    let mut inside = vec![false; ops_len];
    for &i in candidate {
        inside[i] = true;
    }
    candidate.iter().copied().filter(|&i| required[i].iter().all(|&w| inside[w])).collect()
}

/// What one shrinking step learnt about a window.
enum Trial {
    Violates,
    Linearizable,
    /// The search gave up; the window may or may not be linearizable.
    Unknown,
}

/// Checks a window (indices into `ops`) within what is left of the shrinking budget.
fn trial(initial: &Value, ops: &[Op], window: &[usize], budget: &mut usize) -> Trial {
    let window: Vec<Op> = window.iter().map(|&i| ops[i].clone()).collect();
    let limit = (*budget).min(MAX_SEARCH_STATES);
    let (verdict, states) = search(&prepare(initial, &window), limit, false);
    *budget = budget.saturating_sub(states);
    match verdict {
        Search::Linearizable => Trial::Linearizable,
        Search::Violation { .. } => Trial::Violates,
        Search::Exhausted => Trial::Unknown,
    }
}

/// Shrinks a non-linearizable history to a 1-minimal window (see the module documentation)
/// and explains it.
fn shrink(initial: &Value, ops: Vec<Op>) -> Violation {
    let required = required_writes(&ops);
    let mut budget = MAX_SHRINK_STATES;
    let mut window: Vec<usize> = (0..ops.len()).collect();
    let mut minimal = true;
    let mut chunks = 2;
    'shrinking: while window.len() >= 2 {
        let size = window.len().div_ceil(chunks);
        let mut reduced = false;
        for start in (0..window.len()).step_by(size) {
            let end = (start + size).min(window.len());
            let rest: Vec<usize> = window[..start].iter().chain(&window[end..]).copied().collect();
            let candidate = closed_window(ops.len(), &required, &rest);
            if candidate.is_empty() {
                continue;
            }
            match trial(initial, &ops, &candidate, &mut budget) {
                Trial::Violates => {
                    window = candidate;
                    chunks = (chunks - 1).max(2);
                    reduced = true;
                    break;
                }
                Trial::Linearizable => {}
                Trial::Unknown => {
                    minimal = false;
                    if budget == 0 {
                        break 'shrinking;
                    }
                }
            }
        }
        if !reduced {
            if chunks >= window.len() {
                break;
            }
            chunks = (chunks * 2).min(window.len());
        }
    }
    let window: Vec<Op> = window.into_iter().map(|i| ops[i].clone()).collect();
    let explanation = explain(initial, &window, minimal);
    Violation { window, explanation }
}

/// Words for a non-linearizable window: the longest valid order found, and what follows.
fn explain(initial: &Value, window: &[Op], minimal: bool) -> String {
    let prepared = prepare(initial, window);
    let mut text = format!(
        "no order of these {} operations respects both their real-time order and a single \
         register starting {}",
        window.len(),
        show_value(initial),
    );
    if let (Search::Violation { longest, register }, _) = search(&prepared, MAX_SEARCH_STATES, true) {
        if longest.is_empty() {
            text.push_str("; no operation can even come first");
        } else {
            let skipped = longest.len().saturating_sub(MAX_EXPLAINED_OPS);
            let mut order: Vec<String> = longest[skipped..]
                .iter()
                .map(|&i| {
                    let op = &window[prepared.ops[i].source];
                    format!("client {} {}", op.client, show_kind(&op.kind))
                })
                .collect();
            if skipped > 0 {
                order.insert(0, format!("{skipped} earlier operations"));
            }
            let value = prepared.values.get(register as usize).map_or_else(|| "?".to_string(), show_value);
            text.push_str(&format!(
                "; the longest valid order is [{}], leaving the register {}, and none of the \
                 other operations can follow it",
                order.join(", "),
                value,
            ));
        }
    }
    if minimal {
        text.push_str(
            "; removing any one operation (and the reads that may have read it) makes the rest \
             linearizable",
        );
    } else {
        text.push_str("; (the shrinking budget ran out, so this window may not be minimal)");
    }
    text
}

/// `"bytes"`, escaped and cut to [`MAX_SHOWN_VALUE`] bytes, or `absent`.
fn show_value(value: &Value) -> String {
    match value {
        Some(bytes) => {
            let shown = &bytes[..bytes.len().min(MAX_SHOWN_VALUE)];
            let more = if shown.len() < bytes.len() { "..." } else { "" };
            format!("\"{}\"{more}", String::from_utf8_lossy(&escape::escape(shown)))
        }
        None => "absent".to_string(),
    }
}

fn show_kind(kind: &OpKind) -> String {
    match kind {
        OpKind::Read { result } => format!("read -> {}", show_value(result)),
        OpKind::Write { value: None } => "delete".to_string(),
        OpKind::Write { value } => format!("write {}", show_value(value)),
    }
}

impl fmt::Display for Op {
    /// `client 3 [100..250] write "x"`; an unknown outcome shows as `[100..?]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let complete = self.complete.map_or_else(|| "?".to_string(), |c| c.to_string());
        let span = format!("[{}..{}]", self.invoke, complete);
        write!(f, "client {:<4} {:<24} {}", self.client, span, show_kind(&self.kind))?;
        if self.complete.is_none() {
            write!(f, " (outcome unknown)")?;
        }
        Ok(())
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not linearizable: {}", self.explanation)?;
        for op in &self.window {
            write!(f, "\n  {op}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => write!(f, "linearizable"),
            Outcome::Violation(v) => write!(f, "{v}"),
            Outcome::Inconclusive(why) => write!(f, "inconclusive: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn v(s: &str) -> Value {
        Some(s.as_bytes().to_vec())
    }

    fn w(client: u64, invoke: u64, complete: u64, value: &str) -> Op {
        Op::write(client, invoke, Some(complete), v(value))
    }

    fn r(client: u64, invoke: u64, complete: u64, result: &str) -> Op {
        Op::read(client, invoke, Some(complete), v(result))
    }

    fn r_absent(client: u64, invoke: u64, complete: u64) -> Op {
        Op::read(client, invoke, Some(complete), None)
    }

    fn assert_ok(history: &[Op]) {
        let outcome = check_register(None, history);
        assert_eq!(outcome, Outcome::Ok, "{outcome}");
    }

    fn violation(history: &[Op]) -> Violation {
        match check_register(None, history) {
            Outcome::Violation(v) => v,
            other => panic!("expected a violation, got {other}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_ok(&[]);
    }

    #[test]
    fn sequential_history() {
        assert_ok(&[
            r_absent(1, 0, 1),
            w(1, 2, 3, "a"),
            r(2, 4, 5, "a"),
            w(2, 6, 7, "b"),
            r(1, 8, 9, "b"),
            Op::write(1, 10, Some(11), None),
            r_absent(2, 12, 13),
        ]);
    }

    #[test]
    fn concurrent_writes_may_be_read_in_either_order() {
        // Both writes overlap each other; readers after both may see either, but then agree.
        let writes = [w(1, 0, 10, "a"), w(2, 5, 15, "b")];
        for last in ["a", "b"] {
            let mut history = writes.to_vec();
            history.push(r(3, 20, 21, last));
            history.push(r(4, 22, 23, last));
            assert_ok(&history);
        }
        // A read overlapping both writes may see either value, then the other one later.
        let mut history = writes.to_vec();
        history.push(r(3, 1, 9, "a"));
        history.push(r(4, 11, 14, "b"));
        assert_ok(&history);
    }

    #[test]
    fn touching_intervals_overlap() {
        // The write completes at 10 and the read is invoked at 10: either order is allowed.
        assert_ok(&[w(1, 0, 10, "a"), r_absent(2, 10, 12)]);
        // One tick later, the order is forced.
        violation(&[w(1, 0, 10, "a"), r_absent(2, 11, 12)]);
    }

    #[test]
    fn reads_of_initial_absent() {
        assert_ok(&[r_absent(1, 0, 5), r_absent(2, 1, 3), w(3, 2, 8, "a")]);
        assert_eq!(check_register(v("init"), &[r(1, 0, 1, "init")]), Outcome::Ok);
    }

    #[test]
    fn unknown_write_seen_later() {
        assert_ok(&[
            w(1, 0, 1, "a"),
            Op::write(2, 2, None, v("b")),
            r(3, 100, 101, "a"),
            r(3, 200, 201, "b"),
            r(1, 300, 301, "b"),
        ]);
        // An unknown delete too.
        assert_ok(&[
            w(1, 0, 1, "a"),
            Op::write(2, 2, None, None),
            r(3, 100, 101, "a"),
            r_absent(3, 200, 201),
        ]);
    }

    #[test]
    fn unknown_write_never_seen() {
        assert_ok(&[
            w(1, 0, 1, "a"),
            Op::write(2, 2, None, v("b")),
            r(3, 100, 101, "a"),
            r(1, 300, 301, "a"),
        ]);
    }

    #[test]
    fn unknown_write_cannot_be_seen_then_unseen() {
        // Once "b" was read, a later read cannot go back to "a".
        violation(&[
            w(1, 0, 1, "a"),
            Op::write(2, 2, None, v("b")),
            r(3, 100, 101, "b"),
            r(1, 200, 201, "a"),
        ]);
    }

    #[test]
    fn unknown_write_of_a_repeated_value() {
        // An unknown delete may explain a read of absent...
        assert_ok(&[
            w(1, 0, 1, "a"),
            Op::write(2, 2, None, None),
            r_absent(3, 10, 11),
            w(1, 20, 21, "b"),
            r(3, 30, 31, "b"),
        ]);
        // ...but "a" cannot come back after it, since nobody wrote "a" again.
        violation(&[w(1, 0, 1, "a"), Op::write(2, 2, None, None), r_absent(3, 10, 11), r(4, 20, 21, "a")]);
        // "a" written twice, once with unknown outcome, seen after "b" overwrote the first.
        assert_ok(&[w(1, 0, 1, "a"), Op::write(2, 1, None, v("a")), w(1, 2, 3, "b"), r(3, 10, 11, "a")]);
    }

    #[test]
    fn unanswered_reads_are_ignored() {
        assert_ok(&[w(1, 0, 1, "a"), Op::read(2, 5, None, v("nonsense")), r(3, 10, 11, "a")]);
    }

    #[test]
    fn stale_read_after_completed_write() {
        let history = [w(1, 0, 10, "a"), w(2, 20, 30, "b"), r(3, 40, 50, "a")];
        let violation = violation(&history);
        assert_eq!(violation.window, history.to_vec(), "{violation}");
    }

    #[test]
    fn read_of_a_value_nobody_wrote() {
        let history = [w(1, 0, 10, "a"), r(2, 20, 30, "zzz"), r(3, 40, 50, "a")];
        let violation = violation(&history);
        assert_eq!(violation.window, vec![history[1].clone()]);
        assert!(violation.explanation.contains("no write"), "{violation}");
    }

    #[test]
    fn new_then_old_reads() {
        // "b" is being written for a long time; one reader sees it, a later reader sees "a".
        let history = [w(1, 0, 5, "a"), w(2, 10, 100, "b"), r(3, 20, 30, "b"), r(4, 40, 50, "a")];
        let violation = violation(&history);
        assert_eq!(violation.window, history.to_vec(), "{violation}");
    }

    #[test]
    fn lost_acknowledged_write() {
        let violation = violation(&[w(1, 0, 10, "a"), r_absent(2, 20, 30)]);
        assert_eq!(violation.window.len(), 2, "{violation}");
        let deleted = [w(1, 0, 10, "a"), Op::write(1, 11, Some(12), None), r(2, 20, 30, "a")];
        assert_eq!(violation_len(&deleted), 3);
    }

    #[test]
    fn window_keeps_the_writes_its_reads_may_have_read() {
        // The read of "b" completes before "b" is written. The read of absent is fine thanks to
        // the delete; a window must not drop the delete and blame that read instead.
        let history = [
            r(4, 5, 8, "b"),
            w(1, 0, 10, "a"),
            Op::write(2, 20, None, None),
            r_absent(3, 40, 50),
            w(1, 100, 110, "b"),
        ];
        let violation = violation(&history);
        assert_eq!(violation.window, vec![history[0].clone(), history[4].clone()], "{violation}");
    }

    fn violation_len(history: &[Op]) -> usize {
        violation(history).window.len()
    }

    #[test]
    fn window_is_minimal() {
        // A stale read buried among unrelated, well-behaved operations.
        let stale = [w(1, 100, 110, "x"), w(2, 120, 130, "y"), r(3, 140, 150, "x")];
        let mut history =
            vec![w(4, 0, 10, "p"), r(5, 5, 15, "p"), w(4, 20, 30, "q"), r(5, 25, 35, "q"), r(6, 40, 45, "q")];
        history.extend(stale.iter().cloned());
        history.extend([r(4, 160, 170, "y"), w(5, 180, 190, "z"), r(6, 195, 200, "z")]);
        let violation = violation(&history);
        assert_eq!(violation.window, stale.to_vec(), "{violation}");
        assert!(violation.explanation.contains("removing any one"), "{violation}");
        // The window on its own is a violation, and dropping any one of its ops is not.
        assert!(matches!(check_register(None, &violation.window), Outcome::Violation(_)));
        // Only the second write can go without orphaning the read, and without it the rest
        // is fine; without the read, the writes alone are fine too.
        assert_eq!(check_register(None, &[stale[0].clone(), stale[2].clone()]), Outcome::Ok);
        assert_eq!(check_register(None, &stale[..2]), Outcome::Ok);
    }

    #[test]
    fn violation_display_is_readable() {
        let violation = violation(&[
            w(1, 0, 10, "a"),
            Op::write(7, 12, None, None),
            w(2, 20, 30, "b"),
            r(3, 40, 50, "a"),
        ]);
        let text = violation.to_string();
        assert!(text.starts_with("not linearizable: "), "{text}");
        assert!(text.contains("client 3"), "{text}");
        assert!(text.contains("[40..50]"), "{text}");
        assert!(text.contains("read -> \"a\""), "{text}");
        assert!(text.contains("longest valid order"), "{text}");
        assert!(!text.contains("client 7"), "the unread delete is irrelevant: {text}");
    }

    #[test]
    fn check_keys_splits_by_key() {
        let history = vec![
            ("k1".to_string(), w(1, 0, 10, "a")),
            ("k2".to_string(), w(2, 0, 10, "b")),
            ("k1".to_string(), r(3, 20, 30, "a")),
            // Wrong only if keys were mixed up: k2 never saw "a".
            ("k2".to_string(), r(3, 40, 50, "b")),
            ("k3".to_string(), r_absent(1, 0, 1)),
        ];
        assert!(check_keys(&history).is_empty());

        let mut bad = history.clone();
        bad.push(("k2".to_string(), r(4, 60, 70, "a")));
        let report = check_keys(&bad);
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].0, "k2");
        assert!(matches!(report[0].1, Outcome::Violation(_)));
    }

    #[test]
    fn budget_exhaustion_is_inconclusive() {
        // Many concurrent writes and a read of the first one: the search must try many orders
        // of the writes before it puts that one last. With a budget of a few states it must
        // give up, not decide.
        let mut history: Vec<Op> = (0..12).map(|c| w(c, 0, 100, &format!("v{c}"))).collect();
        history.push(r(99, 200, 201, "v0"));
        let prepared = prepare(&None, &history);
        assert!(matches!(search(&prepared, 5, false).0, Search::Exhausted));
        assert!(matches!(search(&prepared, MAX_SEARCH_STATES, false).0, Search::Linearizable));
    }

    /// Builds a history that an atomic register really produced: every operation takes effect
    /// at a random instant inside its interval (or, for some unknown writes, never). A share
    /// `unknown` of the operations get no answer.
    fn simulate(rng: &mut StdRng, clients: u64, ops_per_client: usize, unknown: f64) -> Vec<Op> {
        struct Planned {
            op: Op,
            /// When it took effect, with a random tie-break; `None`: never.
            effect: Option<(u64, u64)>,
        }
        let mut planned = Vec::new();
        let mut next_value = 0;
        for client in 0..clients {
            let mut now = rng.gen_range(0..10);
            for _ in 0..ops_per_client {
                let invoke = now + rng.gen_range(0..5);
                let complete = invoke + rng.gen_range(0..30);
                let lost = rng.gen_bool(unknown);
                // An unanswered operation may take effect long after its client gave up.
                let effect_end = if lost { complete + 200 } else { complete };
                let mut effect = Some((rng.gen_range(invoke..=effect_end), rng.gen()));
                let kind = if rng.gen_bool(0.5) {
                    if lost && rng.gen_bool(0.5) {
                        effect = None;
                    }
                    next_value += 1;
                    let value = if rng.gen_bool(0.15) { None } else { v(&format!("v{next_value}")) };
                    OpKind::Write { value }
                } else {
                    OpKind::Read { result: None }
                };
                planned.push(Planned {
                    op: Op { client, invoke, complete: (!lost).then_some(complete), kind },
                    effect,
                });
                // A client that timed out waits out its timeout before going on.
                now = if lost { complete + 40 } else { complete + 1 };
            }
        }
        let mut order: Vec<usize> = (0..planned.len()).filter(|&i| planned[i].effect.is_some()).collect();
        order.sort_by_key(|&i| planned[i].effect);
        let mut register: Value = None;
        for i in order {
            match &mut planned[i].op.kind {
                OpKind::Write { value } => register = value.clone(),
                OpKind::Read { result } => *result = register.clone(),
            }
        }
        planned.into_iter().map(|p| p.op).collect()
    }

    fn expect_violation(history: &[Op], what: &str) -> Violation {
        match check_register(None, history) {
            Outcome::Violation(v) => {
                assert!(
                    matches!(check_register(None, &v.window), Outcome::Violation(_)),
                    "{what}: the window alone must fail: {v}"
                );
                v
            }
            other => panic!("{what}: expected a violation, got {other}"),
        }
    }

    #[test]
    fn random_linearizable_histories_pass_and_corrupted_ones_fail() {
        for seed in 0..30 {
            let mut rng = StdRng::seed_from_u64(seed);
            let history = simulate(&mut rng, 5, 40, 0.1);
            let outcome = check_register(None, &history);
            assert_eq!(outcome, Outcome::Ok, "seed {seed}: {outcome}");

            let reads: Vec<usize> = (0..history.len())
                .filter(|&i| history[i].is_read() && history[i].complete.is_some())
                .collect();
            let Some(&victim) = reads.get(rng.gen_range(0..reads.len().max(1))) else {
                continue;
            };

            // A read of a value never written.
            let mut corrupted = history.clone();
            corrupted[victim].kind = OpKind::Read { result: v("never written") };
            let what = format!("seed {seed}, unwritten value");
            let violation = expect_violation(&corrupted, &what);
            assert_eq!(violation.window, vec![corrupted[victim].clone()]);

            // A read of a value from the future: written only after the read completed.
            let future = reads.iter().find_map(|&ri| {
                let done = history[ri].complete?;
                history.iter().find_map(|op| match &op.kind {
                    OpKind::Write { value: Some(x) } if op.invoke > done => Some((ri, Some(x.clone()))),
                    _ => None,
                })
            });
            if let Some((ri, result)) = future {
                let mut corrupted = history.clone();
                corrupted[ri].kind = OpKind::Read { result };
                let violation = expect_violation(&corrupted, &format!("seed {seed}, future"));
                assert!(violation.window.contains(&corrupted[ri]), "{violation}");
            }

            // A stale read: of a value overwritten before the read was invoked.
            let definite_write = |op: &Op| match (&op.kind, op.complete) {
                (OpKind::Write { value: Some(x) }, Some(done)) => Some((x.clone(), done)),
                _ => None,
            };
            let stale = reads.iter().find_map(|&ri| {
                let newer = history
                    .iter()
                    .rev()
                    .find(|op| definite_write(op).is_some_and(|(_, done)| done < history[ri].invoke))?;
                let (newer_value, _) = definite_write(newer)?;
                history.iter().find_map(|op| match definite_write(op) {
                    Some((x, done)) if done < newer.invoke && x != newer_value => Some((ri, x)),
                    _ => None,
                })
            });
            if let Some((ri, x)) = stale {
                let mut corrupted = history.clone();
                corrupted[ri].kind = OpKind::Read { result: Some(x) };
                let violation = expect_violation(&corrupted, &format!("seed {seed}, stale"));
                assert!(violation.window.contains(&corrupted[ri]), "{violation}");
            }
        }
    }

    /// The plainest possible checker, for tiny histories: tries every order, with no cache,
    /// no rewrites and no pruning rules. Unknown writes that are never placed count as having
    /// taken effect last, which is the same as never.
    fn brute_force(register: &Value, remaining: &[&Op]) -> bool {
        if remaining.iter().all(|op| op.complete.is_none()) {
            return true;
        }
        remaining.iter().enumerate().any(|(i, op)| {
            let blocked = remaining.iter().any(|x| x.completion().is_some_and(|done| done < op.invoke));
            let after = match &op.kind {
                OpKind::Read { result } if result == register => register,
                OpKind::Read { .. } => return false,
                OpKind::Write { value } => value,
            };
            let mut rest = remaining.to_vec();
            rest.remove(i);
            !blocked && brute_force(after, &rest)
        })
    }

    fn brute_force_history(initial: &Value, history: &[Op]) -> bool {
        let ops: Vec<&Op> = history.iter().filter(|op| !(op.is_read() && op.complete.is_none())).collect();
        brute_force(initial, &ops)
    }

    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let mut rng = StdRng::seed_from_u64(42);
        let values = [None, v("a"), v("b"), v("c")];
        let (mut good, mut bad) = (0, 0);
        for case in 0..1500 {
            let len = rng.gen_range(1..=7);
            let history: Vec<Op> = (0..len)
                .map(|_| {
                    let invoke = rng.gen_range(0..20);
                    let complete = rng.gen_bool(0.8).then(|| invoke + rng.gen_range(0..10));
                    let value = values[rng.gen_range(0..values.len())].clone();
                    let client = rng.gen_range(0..4);
                    if rng.gen_bool(0.5) {
                        Op::write(client, invoke, complete, value)
                    } else {
                        Op::read(client, invoke, complete, value)
                    }
                })
                .collect();
            let initial = values[rng.gen_range(0..2)].clone();
            let expected = brute_force_history(&initial, &history);
            match check_register(initial.clone(), &history) {
                Outcome::Ok => {
                    assert!(expected, "case {case}: wrongly linearizable: {history:#?}");
                    good += 1;
                }
                Outcome::Violation(violation) => {
                    assert!(!expected, "case {case}: wrongly rejected: {violation}");
                    assert!(
                        !brute_force_history(&initial, &violation.window),
                        "case {case}: the window is linearizable: {violation}"
                    );
                    assert!(violation.window.iter().all(|op| history.contains(op)));
                    bad += 1;
                }
                Outcome::Inconclusive(why) => panic!("case {case}: {why}"),
            }
        }
        // Both verdicts must be well represented for the comparison to mean anything.
        assert!(good > 200 && bad > 200, "{good} linearizable, {bad} not");
    }

    #[test]
    fn long_concurrent_history_is_checked_quickly() {
        // The size the chaos driver produces: ~1000 ops on one key from 10 clients.
        let mut rng = StdRng::seed_from_u64(7);
        let history = simulate(&mut rng, 10, 100, 0.05);
        let outcome = check_register(None, &history);
        assert_eq!(outcome, Outcome::Ok, "{outcome}");
    }
}
