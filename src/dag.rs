//! Graph building: nodes and edges with cycles rejected as each edge is added, then frozen into an
//! immutable [`Plan`] with a topological order.
//!
//! Cycle detection is incremental (Pearce–Kelly): the builder keeps a topological order at all times,
//! so an edge that agrees with it costs O(1) and only edges that contradict it search the affected
//! region. Graphs built parents-first (the common case) never search at all.

use std::collections::HashMap;

/// Why a graph was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    /// Two different tasks share one name.
    #[error("duplicate task name {0:?}: two different tasks cannot share a name in one graph")]
    DuplicateTask(String),
    /// An edge names a task that is not in the graph.
    #[error("task {task:?} depends on unknown task {missing:?}")]
    UnknownDependency {
        /// The dependent task.
        task: String,
        /// The name that was not found.
        missing: String,
    },
    /// Adding an edge would close a cycle; `path` starts and ends with the same task.
    #[error("cycle detected: {}", path.join(" -> "))]
    Cycle {
        /// The tasks around the cycle, the first repeated at the end.
        path: Vec<String>,
    },
}

/// Index of a node in a builder or plan.
pub type NodeId = u32;

/// A mutable graph under construction, generic over the node payload.
#[derive(Debug, Clone)]
pub struct DagBuilder<N> {
    names: Vec<String>,
    payloads: Vec<N>,
    index: HashMap<String, NodeId>,
    parents: Vec<Vec<NodeId>>,
    children: Vec<Vec<NodeId>>,
    /// `ord[n]` is n's position in a valid topological order.
    ord: Vec<u32>,
    edges: usize,
}

impl<N> Default for DagBuilder<N> {
    fn default() -> Self {
        DagBuilder {
            names: Vec::new(),
            payloads: Vec::new(),
            index: HashMap::new(),
            parents: Vec::new(),
            children: Vec::new(),
            ord: Vec::new(),
            edges: 0,
        }
    }
}

impl<N> DagBuilder<N> {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Number of distinct edges.
    pub fn edge_count(&self) -> usize {
        self.edges
    }

    /// The node called `name`, if any.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.index.get(name).copied()
    }

    /// The name of node `n`.
    pub fn name(&self, n: NodeId) -> &str {
        &self.names[n as usize]
    }

    /// The payload of node `n`.
    pub fn payload(&self, n: NodeId) -> &N {
        &self.payloads[n as usize]
    }

    /// Parents of node `n`, in the order their edges were added.
    pub fn parents(&self, n: NodeId) -> &[NodeId] {
        &self.parents[n as usize]
    }

    /// Children of node `n`, in the order their edges were added.
    pub fn children(&self, n: NodeId) -> &[NodeId] {
        &self.children[n as usize]
    }

    /// Adds a node. Adding a name that exists returns the existing node when `same` says the payloads
    /// are the same task, and [`DagError::DuplicateTask`] otherwise.
    pub fn add_node(
        &mut self,
        name: &str,
        payload: N,
        same: impl FnOnce(&N, &N) -> bool,
    ) -> Result<NodeId, DagError> {
        if let Some(&id) = self.index.get(name) {
            return if same(&self.payloads[id as usize], &payload) {
                Ok(id)
            } else {
                Err(DagError::DuplicateTask(name.to_string()))
            };
        }
        let id = self.names.len() as NodeId;
        self.names.push(name.to_string());
        self.payloads.push(payload);
        self.index.insert(name.to_string(), id);
        self.parents.push(Vec::new());
        self.children.push(Vec::new());
        self.ord.push(id);
        Ok(id)
    }

    /// Adds the edge `parent -> child`; adding an existing edge is a no-op. Rejects an edge that would
    /// close a cycle, leaving the graph unchanged.
    pub fn add_edge(&mut self, parent: NodeId, child: NodeId) -> Result<(), DagError> {
        if self.children[parent as usize].contains(&child) {
            return Ok(());
        }
        if parent == child {
            let n = self.names[parent as usize].clone();
            return Err(DagError::Cycle {
                path: vec![n.clone(), n],
            });
        }
        let (lb, ub) = (self.ord[child as usize], self.ord[parent as usize]);
        if lb < ub {
            self.reorder(parent, child, lb, ub)?;
        }
        self.children[parent as usize].push(child);
        self.parents[child as usize].push(parent);
        self.edges += 1;
        Ok(())
    }

    /// Removes the edge `parent -> child` if present (the topological order stays valid).
    pub fn remove_edge(&mut self, parent: NodeId, child: NodeId) {
        let kids = &mut self.children[parent as usize];
        if let Some(i) = kids.iter().position(|c| *c == child) {
            kids.remove(i);
            let ps = &mut self.parents[child as usize];
            if let Some(j) = ps.iter().position(|p| *p == parent) {
                ps.remove(j);
            }
            self.edges -= 1;
        }
    }

    /// Removes every node with index `len` or above, and their edges: undoes a partly applied
    /// change (nodes are only ever appended, so the newest are last).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.names.len() {
            return;
        }
        for n in len..self.names.len() {
            let name = std::mem::take(&mut self.names[n]);
            self.index.remove(&name);
        }
        self.names.truncate(len);
        self.payloads.truncate(len);
        self.parents.truncate(len);
        self.children.truncate(len);
        let keep = len as NodeId;
        for list in self.children.iter_mut() {
            list.retain(|c| *c < keep);
        }
        for list in self.parents.iter_mut() {
            list.retain(|p| *p < keep);
        }
        // Edges whose parent was removed are gone with its children list.
        self.edges = self.children.iter().map(Vec::len).sum();
        // Positions may now have gaps; compact them so `ord` stays a permutation of 0..len.
        let mut by_ord: Vec<NodeId> = (0..keep).collect();
        by_ord.sort_unstable_by_key(|n| self.ord[*n as usize]);
        self.ord.truncate(len);
        for (pos, n) in by_ord.into_iter().enumerate() {
            self.ord[n as usize] = pos as u32;
        }
    }

    /// Pearce–Kelly: restore a topological order for the new edge `x -> y` where ord[y] < ord[x].
    fn reorder(&mut self, x: NodeId, y: NodeId, lb: u32, ub: u32) -> Result<(), DagError> {
        // Forward from y over nodes ordered at most ub; reaching x means a cycle.
        let mut came_from: HashMap<NodeId, NodeId> = HashMap::new();
        let mut fwd = vec![y];
        let mut stack = vec![y];
        came_from.insert(y, y);
        while let Some(n) = stack.pop() {
            for &c in &self.children[n as usize] {
                if c == x {
                    return Err(self.cycle_error(x, y, n, &came_from));
                }
                if self.ord[c as usize] < ub && !came_from.contains_key(&c) {
                    came_from.insert(c, n);
                    fwd.push(c);
                    stack.push(c);
                }
            }
        }
        // Backward from x over nodes ordered at least lb.
        let mut seen: HashMap<NodeId, ()> = HashMap::new();
        let mut bwd = vec![x];
        let mut stack = vec![x];
        seen.insert(x, ());
        while let Some(n) = stack.pop() {
            for &p in &self.parents[n as usize] {
                if self.ord[p as usize] > lb && !seen.contains_key(&p) {
                    seen.insert(p, ());
                    bwd.push(p);
                    stack.push(p);
                }
            }
        }
        let key = |v: &NodeId| self.ord[*v as usize];
        fwd.sort_by_key(key);
        bwd.sort_by_key(key);
        let mut slots: Vec<u32> = bwd
            .iter()
            .chain(fwd.iter())
            .map(|v| self.ord[*v as usize])
            .collect();
        slots.sort_unstable();
        for (v, slot) in bwd.iter().chain(fwd.iter()).zip(slots) {
            self.ord[*v as usize] = slot;
        }
        Ok(())
    }

    /// The cycle `x -> y -> ... -> last -> x` found by the forward search.
    fn cycle_error(
        &self,
        x: NodeId,
        y: NodeId,
        last: NodeId,
        came_from: &HashMap<NodeId, NodeId>,
    ) -> DagError {
        let mut back = vec![last];
        let mut n = last;
        while n != y {
            n = came_from[&n];
            back.push(n);
        }
        let mut path = vec![self.names[x as usize].clone()];
        path.extend(back.iter().rev().map(|v| self.names[*v as usize].clone()));
        path.push(self.names[x as usize].clone());
        DagError::Cycle { path }
    }

    /// Freezes the graph into a plan (the builder stays usable).
    pub fn plan(&self) -> Plan {
        let mut order: Vec<NodeId> = (0..self.len() as NodeId).collect();
        order.sort_unstable_by_key(|n| self.ord[*n as usize]);
        Plan {
            names: self.names.clone(),
            parents: self.parents.clone(),
            children: self.children.clone(),
            order,
        }
    }

    /// Consumes the builder, returning the payloads in node order alongside the plan.
    pub fn into_parts(self) -> (Plan, Vec<N>) {
        let plan = self.plan();
        (plan, self.payloads)
    }
}

/// An immutable, validated graph: names, edges and a cached topological order.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    names: Vec<String>,
    parents: Vec<Vec<NodeId>>,
    children: Vec<Vec<NodeId>>,
    order: Vec<NodeId>,
}

impl Plan {
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the plan is empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The name of node `n`.
    pub fn name(&self, n: NodeId) -> &str {
        &self.names[n as usize]
    }

    /// Parents of `n`.
    pub fn parents(&self, n: NodeId) -> &[NodeId] {
        &self.parents[n as usize]
    }

    /// Children of `n`.
    pub fn children(&self, n: NodeId) -> &[NodeId] {
        &self.children[n as usize]
    }

    /// Every node, parents before children.
    pub fn topological_order(&self) -> &[NodeId] {
        &self.order
    }

    /// Nodes without parents.
    pub fn roots(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.len() as NodeId).filter(|n| self.parents[*n as usize].is_empty())
    }

    /// Nodes without children.
    pub fn leaves(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.len() as NodeId).filter(|n| self.children[*n as usize].is_empty())
    }

    /// Every node reachable from `n` (excluding `n`).
    pub fn descendants(&self, n: NodeId) -> Vec<NodeId> {
        let mut seen = vec![false; self.len()];
        let mut out = Vec::new();
        let mut stack = vec![n];
        while let Some(v) = stack.pop() {
            for &c in &self.children[v as usize] {
                if !seen[c as usize] {
                    seen[c as usize] = true;
                    out.push(c);
                    stack.push(c);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(edges: &[(&str, &str)]) -> Result<DagBuilder<()>, DagError> {
        let mut b = DagBuilder::new();
        for (p, c) in edges {
            let p = b.add_node(p, (), |_, _| true)?;
            let c = b.add_node(c, (), |_, _| true)?;
            b.add_edge(p, c)?;
        }
        Ok(b)
    }

    fn is_topological(b: &DagBuilder<()>) -> bool {
        let plan = b.plan();
        let mut pos = vec![0; plan.len()];
        for (i, n) in plan.topological_order().iter().enumerate() {
            pos[*n as usize] = i;
        }
        (0..plan.len() as NodeId).all(|n| {
            plan.children(n)
                .iter()
                .all(|c| pos[n as usize] < pos[*c as usize])
        })
    }

    #[test]
    fn cycle_names_every_task_in_order() {
        let err = build(&[("a", "b"), ("b", "c"), ("c", "a")]).unwrap_err();
        assert_eq!(
            err,
            DagError::Cycle {
                path: vec!["c".into(), "a".into(), "b".into(), "c".into()]
            }
        );
        assert_eq!(err.to_string(), "cycle detected: c -> a -> b -> c");
    }

    #[test]
    fn self_loop_is_a_cycle() {
        let err = build(&[("a", "a")]).unwrap_err();
        assert_eq!(err.to_string(), "cycle detected: a -> a");
    }

    #[test]
    fn edges_added_children_first_are_reordered() {
        let b = build(&[("c", "d"), ("b", "c"), ("a", "b"), ("a", "d")]).unwrap();
        assert!(is_topological(&b));
        let plan = b.plan();
        let names: Vec<&str> = plan
            .topological_order()
            .iter()
            .map(|n| plan.name(*n))
            .collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
    }

    #[test]
    fn rejected_edge_leaves_graph_unchanged() {
        let mut b = build(&[("a", "b"), ("b", "c")]).unwrap();
        let (a, c) = (b.find("a").unwrap(), b.find("c").unwrap());
        assert!(b.add_edge(c, a).is_err());
        assert_eq!(b.edge_count(), 2);
        assert!(b.parents(a).is_empty());
        assert!(is_topological(&b));
    }

    #[test]
    fn duplicate_edges_and_nodes_are_idempotent() {
        let b = build(&[("a", "b"), ("a", "b")]).unwrap();
        assert_eq!(b.edge_count(), 1);
        let mut b2: DagBuilder<u8> = DagBuilder::new();
        b2.add_node("x", 1, |a, b| a == b).unwrap();
        assert_eq!(b2.add_node("x", 1, |a, b| a == b).unwrap(), 0);
        assert_eq!(
            b2.add_node("x", 2, |a, b| a == b),
            Err(DagError::DuplicateTask("x".into()))
        );
    }

    #[test]
    fn random_graphs_stay_topological_and_cycles_are_real() {
        // Deterministic LCG so the test needs no extra crates.
        let mut s: u64 = 0x2545F4914F6CDD1D;
        let mut rnd = |m: u64| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) % m
        };
        for _ in 0..50 {
            let mut b: DagBuilder<()> = DagBuilder::new();
            for i in 0..30 {
                b.add_node(&format!("n{i}"), (), |_, _| true).unwrap();
            }
            for _ in 0..80 {
                let (p, c) = (rnd(30) as NodeId, rnd(30) as NodeId);
                match b.add_edge(p, c) {
                    Ok(()) => assert!(is_topological(&b)),
                    Err(DagError::Cycle { path }) => {
                        // Every consecutive pair in the reported cycle is an edge (or the new one).
                        for w in path.windows(2) {
                            let (u, v) = (b.find(&w[0]).unwrap(), b.find(&w[1]).unwrap());
                            assert!(b.children(u).contains(&v) || (u, v) == (p, c));
                        }
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
        }
    }

    #[test]
    fn truncate_removes_new_nodes_and_their_edges() {
        let mut b = build(&[("a", "b"), ("b", "c")]).unwrap();
        let d = b.add_node("d", (), |_, _| true).unwrap();
        let a = b.find("a").unwrap();
        b.add_edge(d, a).unwrap();
        b.truncate(3);
        assert_eq!(b.len(), 3);
        assert_eq!(b.find("d"), None);
        assert!(b.parents(a).is_empty());
        assert_eq!(b.edge_count(), 2);
        assert!(is_topological(&b));
        // The builder stays usable: the name is free again and ordering still works.
        let d2 = b.add_node("d", (), |_, _| true).unwrap();
        let c = b.find("c").unwrap();
        b.add_edge(c, d2).unwrap();
        assert!(is_topological(&b));
    }

    #[test]
    fn descendants_roots_leaves() {
        let plan = build(&[("a", "b"), ("b", "c"), ("a", "d"), ("e", "d")])
            .unwrap()
            .plan();
        let id = |s: &str| {
            (0..plan.len() as NodeId)
                .find(|n| plan.name(*n) == s)
                .unwrap()
        };
        let mut d: Vec<&str> = plan
            .descendants(id("a"))
            .iter()
            .map(|n| plan.name(*n))
            .collect();
        d.sort();
        assert_eq!(d, ["b", "c", "d"]);
        assert_eq!(plan.roots().count(), 2);
        assert_eq!(plan.leaves().count(), 2);
    }
}
