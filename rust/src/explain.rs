//! Per-row feature attributions of tree-ensemble models (the "why" stored with each alert).
//!
//! Two methods over one flat representation of the trees:
//!
//! * [`Method::TreeShap`]: exact path-dependent TreeSHAP (Lundberg et al. 2018, algorithm 2),
//!   the method of XGBoost's `pred_contribs`. The contributions of a row sum to the model
//!   output minus the expected output; cost per row is O(trees × leaves × depth²).
//! * [`Method::Path`]: path attribution (Saabas): along the row's path each split moves the
//!   expected output from the parent's to the child's, and that move is credited to the
//!   split's feature. XGBoost's `approx_contribs`. Also additive, O(trees × depth) per row,
//!   so it suits large forests such as an Isolation Forest (where the output is the average
//!   isolation depth and this is "path-length attribution").
//!
//! Expected values of internal nodes are the cover-weighted means of their children
//! (cover = training rows or hessian mass reaching the node), computed once at
//! construction exactly as XGBoost does.
//!
//! TreeSHAP is evaluated the "Fast TreeSHAP v2" way (Yang 2021) when the tables fit: a
//! leaf's contributions depend on the row only through which of the leaf's path features
//! the row satisfies, so for every leaf and every such pattern the contributions are
//! computed once at construction (the recursive algorithm's extend/unwind, run on the
//! leaf's path). Explaining a row is then a table lookup per leaf: O(trees × leaves ×
//! depth) instead of O(trees × leaves × depth²). Forests whose tables would be too large
//! use the recursive algorithm.

use rayon::prelude::*;
use serde::Serialize;

use crate::error::TxError;

/// How a row's output is split among its features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Exact path-dependent TreeSHAP.
    TreeShap,
    /// Saabas path attribution.
    Path,
}

impl Method {
    /// Parses `"treeshap"` or `"path"`.
    pub fn parse(name: &str) -> Result<Self, TxError> {
        match name {
            "treeshap" => Ok(Method::TreeShap),
            "path" => Ok(Method::Path),
            other => Err(TxError::Config(format!(
                "unknown explanation method {other:?} (expected \"treeshap\" or \"path\")"
            ))),
        }
    }

    /// The name stored with explanations.
    pub fn name(self) -> &'static str {
        match self {
            Method::TreeShap => "treeshap",
            Method::Path => "path",
        }
    }
}

/// Trees as flat node arrays, every tree's nodes contiguous, root first.
///
/// Node indices in `left`/`right` are relative to the tree's first node; a leaf has
/// `left == -1`. A child's index is always greater than its parent's (XGBoost and
/// scikit-learn both number nodes that way), which guarantees every walk ends.
#[derive(Clone, Debug)]
pub struct TreeEnsemble {
    tree_offsets: Vec<usize>,
    feature: Vec<u32>,
    threshold: Vec<f64>,
    left: Vec<u32>,
    right: Vec<u32>,
    default_left: Vec<bool>,
    is_leaf: Vec<bool>,
    /// Leaf output, or for an internal node the cover-weighted mean of its subtree.
    value: Vec<f64>,
    cover: Vec<f64>,
    n_features: usize,
    /// `x < threshold` goes left (XGBoost); otherwise `x <= threshold` (scikit-learn).
    strict_less: bool,
    /// Added to the bias: e.g. the booster's base margin.
    base: f64,
    /// Every output and contribution is multiplied by it (e.g. `-1 / n_trees` turns an
    /// Isolation Forest's summed depths into "less average depth = more anomalous").
    scale: f64,
    max_depth: usize,
    /// Precomputed TreeSHAP tables per tree, `None` for a tree explained recursively.
    fast: Vec<Option<FastTree>>,
}

/// Longest root-to-leaf path (in splits) for the precomputed tables: a leaf's table has
/// `2^depth` rows.
const FAST_MAX_PATH_DEPTH: usize = 12;
/// Largest total size of the precomputed tables (values) before falling back.
const FAST_MAX_TABLE_VALUES: usize = 16 << 20;

/// Precomputed TreeSHAP tables of one tree (Fast TreeSHAP v2), laid out flat.
///
/// A row's walk is summarised per leaf by its *path pattern*: bit `d` set when the row
/// satisfies the split at depth `d` of the leaf's path. A table per *unit* holds, for every
/// pattern, the contributions of the unit's distinct path features, so explaining a row is
/// one branch-free pass over the tree's splits in node order (children follow parents)
/// carrying the pattern down to every node, then one table row per unit. A unit is a lone
/// leaf, or a node whose two children are both leaves: their tables are summed into one
/// indexed by the node's pattern plus the bit of its own split (the pattern of its left
/// child), which halves the additions of a full tree.
#[derive(Clone, Debug)]
struct FastTree {
    /// Every internal node, in node order.
    splits: Vec<FastSplit>,
    /// Per unit: the node whose pattern indexes its table (a lone leaf; a pair's left leaf).
    unit_node: Vec<u32>,
    /// Per unit: number of distinct path features `m` (0 for a root-only tree).
    unit_m: Vec<u8>,
    /// Per unit: offset of its `m` features in `features`.
    unit_features: Vec<u32>,
    /// Per unit: offset of its `2^depth × m` table in `table`.
    unit_table: Vec<u32>,
    features: Vec<u32>,
    table: Vec<f64>,
}

/// One internal node of a [`FastTree`], everything its step needs side by side.
#[derive(Clone, Copy, Debug)]
struct FastSplit {
    /// `x < threshold` goes left (a non-strict split's threshold is moved one ulp up).
    threshold: f64,
    feature: u32,
    /// This node and its children, tree-relative.
    node: u32,
    left: u32,
    right: u32,
    /// The node's depth: the pattern bit its split sets.
    bit: u8,
    /// Where a missing value goes.
    default_left: bool,
}

impl FastTree {
    /// Appends a unit; `None` when the tables outgrow their limit or their offsets.
    fn push_unit(&mut self, node: usize, features: Vec<u32>, table: Vec<f64>) -> Option<()> {
        self.unit_node.push(u32::try_from(node).ok()?);
        self.unit_m.push(features.len() as u8);
        self.unit_features
            .push(u32::try_from(self.features.len()).ok()?);
        self.unit_table.push(u32::try_from(self.table.len()).ok()?);
        self.features.extend(features);
        self.table.extend(table);
        (self.table.len() <= FAST_MAX_TABLE_VALUES).then_some(())
    }
}

/// Scratch space of [`TreeEnsemble::fast_shap_block`], reused across trees.
struct FastWork {
    /// Path pattern per node of the current tree and row.
    node_pattern: Vec<u32>,
    /// Path pattern per unit and row (`unit * rows + row`).
    unit_pattern: Vec<u32>,
}

/// Parameters of [`TreeEnsemble::new`], named because there are many.
pub struct TreeArrays<'a> {
    /// `T + 1` offsets of the trees' first nodes; the last is the node count.
    pub tree_offsets: &'a [i64],
    /// Split feature per node (ignored for leaves).
    pub feature: &'a [i32],
    /// Split threshold per node (ignored for leaves).
    pub threshold: &'a [f64],
    /// Left child per node, tree-relative, `-1` for a leaf.
    pub left: &'a [i32],
    /// Right child per node, tree-relative, `-1` for a leaf.
    pub right: &'a [i32],
    /// Whether a missing (NaN) value goes left.
    pub default_left: &'a [bool],
    /// Leaf outputs (internal nodes' values are ignored and recomputed).
    pub value: &'a [f64],
    /// Cover (training mass) per node; positive.
    pub cover: &'a [f64],
}

impl TreeEnsemble {
    /// Checks the arrays and computes the internal nodes' expected values.
    pub fn new(
        arrays: TreeArrays<'_>,
        n_features: usize,
        strict_less: bool,
        base: f64,
        scale: f64,
    ) -> Result<Self, TxError> {
        let bad = |msg: String| TxError::Input(format!("invalid tree arrays: {msg}"));
        let n = arrays.feature.len();
        for (name, len) in [
            ("threshold", arrays.threshold.len()),
            ("left", arrays.left.len()),
            ("right", arrays.right.len()),
            ("default_left", arrays.default_left.len()),
            ("value", arrays.value.len()),
            ("cover", arrays.cover.len()),
        ] {
            if len != n {
                return Err(bad(format!("{name} has {len} nodes, feature has {n}")));
            }
        }
        let offs = arrays.tree_offsets;
        if offs.len() < 2 || offs[0] != 0 || offs[offs.len() - 1] != n as i64 {
            return Err(bad(
                "tree_offsets must start at 0 and end at the node count".into(),
            ));
        }
        if !scale.is_finite() || scale == 0.0 || !base.is_finite() {
            return Err(bad("scale must be finite and non-zero, base finite".into()));
        }
        let mut tree_offsets = Vec::with_capacity(offs.len());
        for w in offs.windows(2) {
            if w[1] <= w[0] {
                return Err(bad("every tree needs at least one node".into()));
            }
            tree_offsets.push(w[0] as usize);
        }
        tree_offsets.push(n);
        let mut e = TreeEnsemble {
            tree_offsets,
            feature: vec![0; n],
            threshold: arrays.threshold.to_vec(),
            left: vec![0; n],
            right: vec![0; n],
            default_left: arrays.default_left.to_vec(),
            is_leaf: vec![false; n],
            value: arrays.value.to_vec(),
            cover: arrays.cover.to_vec(),
            n_features,
            strict_less,
            base,
            scale,
            max_depth: 0,
            fast: Vec::new(),
        };
        for t in 0..e.tree_offsets.len() - 1 {
            let (start, end) = (e.tree_offsets[t], e.tree_offsets[t + 1]);
            let size = end - start;
            for i in start..end {
                let local = i - start;
                if !(e.cover[i] > 0.0 && e.cover[i].is_finite()) {
                    return Err(bad(format!(
                        "tree {t} node {local}: cover must be positive"
                    )));
                }
                let (l, r) = (arrays.left[i], arrays.right[i]);
                if l == -1 {
                    e.is_leaf[i] = true;
                    if !e.value[i].is_finite() {
                        return Err(bad(format!("tree {t} leaf {local}: value is not finite")));
                    }
                    continue;
                }
                let child_ok = |c: i32| c as i64 > local as i64 && (c as usize) < size;
                if !child_ok(l) || !child_ok(r) {
                    return Err(bad(format!(
                        "tree {t} node {local}: children {l}, {r} must follow it in the tree"
                    )));
                }
                let f = arrays.feature[i];
                if f < 0 || f as usize >= n_features {
                    return Err(bad(format!(
                        "tree {t} node {local}: feature {f} not in 0..{n_features}"
                    )));
                }
                e.feature[i] = f as u32;
                e.left[i] = l as u32;
                e.right[i] = r as u32;
            }
            // Children follow parents: one reverse pass fills expectations bottom-up.
            for i in (start..end).rev() {
                if !e.is_leaf[i] {
                    let (l, r) = (start + e.left[i] as usize, start + e.right[i] as usize);
                    e.value[i] = (e.value[l] * e.cover[l] + e.value[r] * e.cover[r]) / e.cover[i];
                }
            }
            let mut depth = vec![0usize; size];
            for local in 0..size {
                let i = start + local;
                if !e.is_leaf[i] {
                    let d = depth[local] + 1;
                    depth[e.left[i] as usize] = d;
                    depth[e.right[i] as usize] = d;
                    e.max_depth = e.max_depth.max(d);
                }
            }
        }
        e.fast = e.build_fast_tables();
        Ok(e)
    }

    /// Tables for every tree, or none at all when some tree is too deep or they get big.
    fn build_fast_tables(&self) -> Vec<Option<FastTree>> {
        let mut total = 0usize;
        let mut out = Vec::with_capacity(self.n_trees());
        for t in 0..self.n_trees() {
            let Some(tree) = self.fast_tree(t) else {
                return vec![None; self.n_trees()];
            };
            total += tree.table.len();
            if total > FAST_MAX_TABLE_VALUES {
                return vec![None; self.n_trees()];
            }
            out.push(Some(tree));
        }
        out
    }

    fn fast_tree(&self, t: usize) -> Option<FastTree> {
        let start = self.tree_offsets[t];
        let mut tree = FastTree {
            splits: Vec::new(),
            unit_node: Vec::new(),
            unit_m: Vec::new(),
            unit_features: Vec::new(),
            unit_table: Vec::new(),
            features: Vec::new(),
            table: Vec::new(),
        };
        // Depth-first over root-to-leaf paths, carrying (feature, zero fraction) of every
        // split so far.
        let mut stack: Vec<(usize, Vec<(u32, f64)>)> = vec![(0, Vec::new())];
        while let Some((local, path)) = stack.pop() {
            let i = start + local;
            if path.len() >= FAST_MAX_PATH_DEPTH {
                return None;
            }
            if self.is_leaf[i] {
                let (features, table) = fast_leaf(&path, self.value[i]);
                tree.push_unit(local, features, table)?;
                continue;
            }
            let f = self.feature[i];
            let (l, r) = (self.left[i] as usize, self.right[i] as usize);
            tree.splits.push(FastSplit {
                threshold: match self.strict_less {
                    true => self.threshold[i],
                    false => self.threshold[i].next_up(),
                },
                feature: f,
                node: local as u32,
                left: l as u32,
                right: r as u32,
                bit: path.len() as u8,
                default_left: self.default_left[i],
            });
            let zero = |child: usize| self.cover[start + child] / self.cover[i];
            if self.is_leaf[start + l] && self.is_leaf[start + r] {
                let with = |child: usize| {
                    let mut p = path.clone();
                    p.push((f, zero(child)));
                    fast_leaf(&p, self.value[start + child])
                };
                let ((features, left), (_, right)) = (with(l), with(r));
                // Index: the left leaf's pattern (the node's, plus bit `d` when the row goes
                // left); the right leaf's own pattern has that bit flipped.
                let (m, bit) = (features.len(), 1usize << path.len());
                let table = (0..left.len())
                    .map(|j| left[j] + right[((j / m) ^ bit) * m + j % m])
                    .collect();
                tree.push_unit(l, features, table)?;
                continue;
            }
            for child in [l, r] {
                let mut p = path.clone();
                p.push((f, zero(child)));
                stack.push((child, p));
            }
        }
        tree.splits.sort_unstable_by_key(|s| s.node); // parents before children
        Some(tree)
    }

    /// One tree's contributions to a block of rows. First every row's unit patterns, then
    /// unit by unit across the rows: consecutive additions then go to different rows, so
    /// they do not wait on each other (unit by unit within one row, the root feature's
    /// slot alone would take one dependent addition per unit).
    fn fast_shap_block(
        &self,
        t: usize,
        tree: &FastTree,
        x: &[f32],
        phi: &mut [f64],
        work: &mut FastWork,
    ) {
        let (f, w) = (self.n_features, self.n_features + 1);
        let start = self.tree_offsets[t];
        let size = self.tree_offsets[t + 1] - start;
        let rows = x.len() / f;
        let units = tree.unit_m.len();
        work.unit_pattern.clear();
        work.unit_pattern.resize(units * rows, 0);
        let pat = &mut work.node_pattern[..size];
        for (r, row) in x.chunks_exact(f).enumerate() {
            pat[0] = 0;
            for s in &tree.splits {
                let p = pat[s.node as usize];
                let v = row[s.feature as usize];
                let left = ((v as f64) < s.threshold) | (v.is_nan() & s.default_left);
                pat[s.left as usize] = p | ((left as u32) << s.bit);
                pat[s.right as usize] = p | ((!left as u32) << s.bit);
            }
            for (u, &node) in tree.unit_node.iter().enumerate() {
                work.unit_pattern[u * rows + r] = pat[node as usize];
            }
        }
        for unit in 0..units {
            let m = tree.unit_m[unit] as usize;
            let fo = tree.unit_features[unit] as usize;
            let features = &tree.features[fo..fo + m];
            let table = &tree.table[tree.unit_table[unit] as usize..];
            let patterns = &work.unit_pattern[unit * rows..(unit + 1) * rows];
            for (&p, out) in patterns.iter().zip(phi.chunks_exact_mut(w)) {
                let values = &table[p as usize * m..(p as usize + 1) * m];
                for (&g, &v) in features.iter().zip(values) {
                    out[g as usize] += v;
                }
            }
        }
    }

    /// Number of input features.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.tree_offsets.len() - 1
    }

    /// The expected output (the bias every explanation starts from).
    pub fn expected_value(&self) -> f64 {
        let roots: f64 = self.tree_offsets[..self.n_trees()]
            .iter()
            .map(|&r| self.value[r])
            .sum();
        (roots + self.base) * self.scale
    }

    #[inline]
    fn goes_left(&self, node: usize, x: f32) -> bool {
        if x.is_nan() {
            self.default_left[node]
        } else if self.strict_less {
            (x as f64) < self.threshold[node]
        } else {
            (x as f64) <= self.threshold[node]
        }
    }

    /// The model output of one row (sum of leaves plus base, scaled).
    pub fn predict_row(&self, x: &[f32]) -> f64 {
        let mut total = self.base;
        for t in 0..self.n_trees() {
            let start = self.tree_offsets[t];
            let mut i = start;
            while !self.is_leaf[i] {
                let child = if self.goes_left(i, x[self.feature[i] as usize]) {
                    self.left[i]
                } else {
                    self.right[i]
                };
                i = start + child as usize;
            }
            total += self.value[i];
        }
        total * self.scale
    }

    /// Contributions of a block of rows into `phi` (`n_features + 1` values per row, the
    /// last the bias). Trees are the outer loop so that one tree's nodes and tables stay in
    /// cache for the whole block.
    fn contributions_block(&self, x: &[f32], method: Method, phi: &mut [f64]) {
        let (f, w) = (self.n_features, self.n_features + 1);
        let roots: f64 = self.tree_offsets[..self.n_trees()]
            .iter()
            .map(|&r| self.value[r])
            .sum();
        for p in phi.chunks_mut(w) {
            p.iter_mut().for_each(|v| *v = 0.0);
            p[f] = self.base + roots;
        }
        let mut path =
            vec![PathElement::default(); (self.max_depth + 2) * (self.max_depth + 3) / 2];
        let largest = (0..self.n_trees())
            .map(|t| self.tree_offsets[t + 1] - self.tree_offsets[t])
            .max()
            .unwrap_or(0);
        let mut work = FastWork {
            node_pattern: vec![0; largest],
            unit_pattern: Vec::new(),
        };
        for t in 0..self.n_trees() {
            let start = self.tree_offsets[t];
            match (method, &self.fast[t]) {
                (Method::TreeShap, Some(tree)) => self.fast_shap_block(t, tree, x, phi, &mut work),
                (Method::Path, _) => {
                    for (row, p) in x.chunks_exact(f).zip(phi.chunks_exact_mut(w)) {
                        self.saabas(start, row, p);
                    }
                }
                (Method::TreeShap, None) => {
                    for (row, p) in x.chunks_exact(f).zip(phi.chunks_exact_mut(w)) {
                        self.tree_shap(start, 0, row, p, &mut path, 0, 0, 1.0, 1.0, None);
                    }
                }
            }
        }
        phi.iter_mut().for_each(|p| *p *= self.scale);
    }

    fn saabas(&self, start: usize, x: &[f32], phi: &mut [f64]) {
        let mut i = start;
        while !self.is_leaf[i] {
            let f = self.feature[i] as usize;
            let child = if self.goes_left(i, x[f]) {
                self.left[i]
            } else {
                self.right[i]
            };
            let next = start + child as usize;
            phi[f] += self.value[next] - self.value[i];
            i = next;
        }
    }

    /// One step of the recursive algorithm. The parent's unique path occupies
    /// `path[parent..parent + depth]`; this call's path is copied right after it.
    #[allow(clippy::too_many_arguments)]
    fn tree_shap(
        &self,
        start: usize,
        local: usize,
        x: &[f32],
        phi: &mut [f64],
        path: &mut [PathElement],
        parent: usize,
        depth: usize,
        zero_fraction: f64,
        one_fraction: f64,
        feature: Option<u32>,
    ) {
        let me = parent + depth + 1;
        path.copy_within(parent..parent + depth + 1, me);
        let mut depth = depth;
        extend(&mut path[me..], depth, zero_fraction, one_fraction, feature);
        let i = start + local;
        if self.is_leaf[i] {
            let p = &path[me..];
            for k in 1..=depth {
                let w = unwound_path_sum(p, depth, k);
                let el = p[k];
                if let Some(f) = el.feature {
                    phi[f as usize] += w * (el.one_fraction - el.zero_fraction) * self.value[i];
                }
            }
            return;
        }
        let f = self.feature[i];
        let (hot, cold) = if self.goes_left(i, x[f as usize]) {
            (self.left[i] as usize, self.right[i] as usize)
        } else {
            (self.right[i] as usize, self.left[i] as usize)
        };
        let w = self.cover[i];
        let hot_zero = self.cover[start + hot] / w;
        let cold_zero = self.cover[start + cold] / w;
        let (mut incoming_zero, mut incoming_one) = (1.0, 1.0);
        // A feature split on earlier along the path is undone and redone here.
        if let Some(k) = (1..=depth).find(|&k| path[me + k].feature == Some(f)) {
            incoming_zero = path[me + k].zero_fraction;
            incoming_one = path[me + k].one_fraction;
            unwind(&mut path[me..], depth, k);
            depth -= 1;
        }
        self.tree_shap(
            start,
            hot,
            x,
            phi,
            path,
            me,
            depth + 1,
            hot_zero * incoming_zero,
            incoming_one,
            Some(f),
        );
        self.tree_shap(
            start,
            cold,
            x,
            phi,
            path,
            me,
            depth + 1,
            cold_zero * incoming_zero,
            0.0,
            Some(f),
        );
    }

    /// Contributions of every row, `(n_rows, n_features + 1)` row-major, in parallel.
    pub fn contributions(&self, x: &[f32], method: Method) -> Result<Vec<f64>, TxError> {
        let f = self.n_features;
        if f == 0 || !x.len().is_multiple_of(f) {
            return Err(TxError::Input(format!(
                "feature matrix of {} values is not a multiple of {f} columns",
                x.len()
            )));
        }
        const BLOCK: usize = 32;
        let mut out = vec![0.0; x.len() / f * (f + 1)];
        out.par_chunks_mut(BLOCK * (f + 1))
            .zip(x.par_chunks(BLOCK * f))
            .for_each(|(phi, rows)| self.contributions_block(rows, method, phi));
        Ok(out)
    }

    /// One JSON document per row: the `top_k` features by absolute contribution.
    ///
    /// Shape: `{"method", "units", "expected", "output", "top": [{"feature", "value",
    /// "contribution"}, …]}`; features with a zero contribution are left out.
    pub fn explain_json(
        &self,
        x: &[f32],
        method: Method,
        names: &[String],
        units: &str,
        top_k: usize,
    ) -> Result<Vec<String>, TxError> {
        let f = self.n_features;
        if names.len() != f {
            return Err(TxError::Input(format!(
                "{} feature names for a model of {f} features",
                names.len()
            )));
        }
        let phi = self.contributions(x, method)?;
        let expected = self.expected_value();
        Ok(phi
            .par_chunks(f + 1)
            .zip(x.par_chunks(f))
            .map(|(p, row)| {
                let mut order: Vec<usize> = (0..f).filter(|&j| p[j] != 0.0).collect();
                order.sort_by(|&a, &b| p[b].abs().total_cmp(&p[a].abs()).then(a.cmp(&b)));
                order.truncate(top_k);
                let doc = Explanation {
                    method: method.name(),
                    units,
                    expected: round6(expected),
                    output: round6(p.iter().sum()),
                    top: order
                        .iter()
                        .map(|&j| Contribution {
                            feature: &names[j],
                            value: if row[j].is_finite() {
                                Some(round6(row[j] as f64))
                            } else {
                                None
                            },
                            contribution: round6(p[j]),
                        })
                        .collect(),
                };
                serde_json::to_string(&doc).expect("explanations serialise")
            })
            .collect())
    }
}

fn round6(v: f64) -> f64 {
    if v.is_finite() {
        (v * 1e6).round() / 1e6
    } else {
        0.0
    }
}

#[derive(Serialize)]
struct Contribution<'a> {
    feature: &'a str,
    value: Option<f64>,
    contribution: f64,
}

#[derive(Serialize)]
struct Explanation<'a> {
    method: &'static str,
    units: &'a str,
    expected: f64,
    output: f64,
    top: Vec<Contribution<'a>>,
}

/// The table of one leaf from its path's `(feature, zero fraction)` splits, root first:
/// the leaf's distinct path features, and for every path pattern (bit `d`: the split at
/// depth `d` is satisfied) the contributions the recursive algorithm would add at that
/// leaf, `2^depth × m` values.
fn fast_leaf(path: &[(u32, f64)], value: f64) -> (Vec<u32>, Vec<f64>) {
    // Splits on the same feature merge: their zero fractions multiply, and the feature
    // counts as satisfied only when all of them are.
    let mut features: Vec<u32> = Vec::new();
    let mut zeros: Vec<f64> = Vec::new();
    let mut slot = Vec::with_capacity(path.len());
    for &(f, zero) in path {
        let k = match features.iter().position(|&g| g == f) {
            Some(k) => {
                zeros[k] *= zero;
                k
            }
            None => {
                features.push(f);
                zeros.push(zero);
                features.len() - 1
            }
        };
        slot.push(k);
    }
    let (m, d) = (features.len(), path.len());
    let mut by_features = vec![0.0; (1 << m) * m];
    let mut unique = vec![PathElement::default(); m + 1];
    for pattern in 0..1usize << m {
        extend(&mut unique, 0, 1.0, 1.0, None);
        for k in 0..m {
            let one = if pattern & (1 << k) != 0 { 1.0 } else { 0.0 };
            extend(&mut unique, k + 1, zeros[k], one, Some(features[k]));
        }
        for k in 0..m {
            let w = unwound_path_sum(&unique, m, k + 1);
            let el = unique[k + 1];
            by_features[pattern * m + k] = w * (el.one_fraction - el.zero_fraction) * value;
        }
    }
    let mut table = Vec::with_capacity((1 << d) * m);
    for pattern in 0..1usize << d {
        let mut satisfied = (1usize << m) - 1;
        for (depth, &k) in slot.iter().enumerate() {
            if pattern & (1 << depth) == 0 {
                satisfied &= !(1 << k);
            }
        }
        table.extend_from_slice(&by_features[satisfied * m..(satisfied + 1) * m]);
    }
    (features, table)
}

#[derive(Clone, Copy, Debug, Default)]
struct PathElement {
    feature: Option<u32>,
    zero_fraction: f64,
    one_fraction: f64,
    weight: f64,
}

fn extend(path: &mut [PathElement], depth: usize, zero: f64, one: f64, feature: Option<u32>) {
    path[depth] = PathElement {
        feature,
        zero_fraction: zero,
        one_fraction: one,
        weight: if depth == 0 { 1.0 } else { 0.0 },
    };
    let d1 = (depth + 1) as f64;
    for i in (0..depth).rev() {
        path[i + 1].weight += one * path[i].weight * (i + 1) as f64 / d1;
        path[i].weight = zero * path[i].weight * (depth - i) as f64 / d1;
    }
}

fn unwind(path: &mut [PathElement], depth: usize, k: usize) {
    let one = path[k].one_fraction;
    let zero = path[k].zero_fraction;
    let d1 = (depth + 1) as f64;
    let mut next_one = path[depth].weight;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = path[i].weight;
            path[i].weight = next_one * d1 / ((i + 1) as f64 * one);
            next_one = tmp - path[i].weight * zero * (depth - i) as f64 / d1;
        } else {
            path[i].weight = path[i].weight * d1 / (zero * (depth - i) as f64);
        }
    }
    for i in k..depth {
        path[i].feature = path[i + 1].feature;
        path[i].zero_fraction = path[i + 1].zero_fraction;
        path[i].one_fraction = path[i + 1].one_fraction;
    }
}

fn unwound_path_sum(path: &[PathElement], depth: usize, k: usize) -> f64 {
    let one = path[k].one_fraction;
    let zero = path[k].zero_fraction;
    let d1 = (depth + 1) as f64;
    let mut next_one = path[depth].weight;
    let mut total = 0.0;
    for i in (0..depth).rev() {
        if one != 0.0 {
            let tmp = next_one * d1 / ((i + 1) as f64 * one);
            total += tmp;
            next_one = path[i].weight - tmp * zero * (depth - i) as f64 / d1;
        } else if zero != 0.0 {
            total += path[i].weight / zero / ((depth - i) as f64 / d1);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A random tree over `f` features: `(feature, threshold, left, right, value, cover)`.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    struct Flat {
        offsets: Vec<i64>,
        feature: Vec<i32>,
        threshold: Vec<f64>,
        left: Vec<i32>,
        right: Vec<i32>,
        default_left: Vec<bool>,
        value: Vec<f64>,
        cover: Vec<f64>,
    }

    fn grow(rng: &mut Rng, flat: &mut Flat, start: usize, depth: usize, f: usize, cover: f64) {
        let me = flat.feature.len();
        flat.feature.push(0);
        flat.threshold.push(0.0);
        flat.left.push(-1);
        flat.right.push(-1);
        flat.default_left.push(rng.next() < 0.5);
        flat.value.push(rng.next() * 4.0 - 2.0);
        flat.cover.push(cover);
        if depth == 0 || rng.next() < 0.15 {
            return;
        }
        flat.feature[me] = (rng.next() * f as f64) as i32;
        flat.threshold[me] = rng.next() * 2.0 - 1.0;
        let share = 0.1 + 0.8 * rng.next();
        flat.left[me] = (flat.feature.len() - start) as i32;
        grow(rng, flat, start, depth - 1, f, cover * share);
        flat.right[me] = (flat.feature.len() - start) as i32;
        grow(rng, flat, start, depth - 1, f, cover * (1.0 - share));
    }

    fn forest(seed: u64, trees: usize, depth: usize, f: usize, strict: bool) -> TreeEnsemble {
        let mut rng = Rng(seed);
        let mut flat = Flat {
            offsets: vec![0],
            feature: vec![],
            threshold: vec![],
            left: vec![],
            right: vec![],
            default_left: vec![],
            value: vec![],
            cover: vec![],
        };
        for _ in 0..trees {
            let start = flat.feature.len();
            grow(&mut rng, &mut flat, start, depth, f, 100.0);
            flat.offsets.push(flat.feature.len() as i64);
        }
        let arrays = TreeArrays {
            tree_offsets: &flat.offsets,
            feature: &flat.feature,
            threshold: &flat.threshold,
            left: &flat.left,
            right: &flat.right,
            default_left: &flat.default_left,
            value: &flat.value,
            cover: &flat.cover,
        };
        TreeEnsemble::new(arrays, f, strict, 0.25, 1.0).unwrap()
    }

    /// `E[f(x) | x_S]` the way TreeSHAP defines it: splits on features in S follow the
    /// row, other splits average the children by cover.
    fn conditional(e: &TreeEnsemble, x: &[f32], subset: u32) -> f64 {
        fn walk(e: &TreeEnsemble, start: usize, local: usize, x: &[f32], s: u32) -> f64 {
            let i = start + local;
            if e.is_leaf[i] {
                return e.value[i];
            }
            let f = e.feature[i];
            let (l, r) = (e.left[i] as usize, e.right[i] as usize);
            if s & (1 << f) != 0 {
                let next = if e.goes_left(i, x[f as usize]) { l } else { r };
                walk(e, start, next, x, s)
            } else {
                (walk(e, start, l, x, s) * e.cover[start + l]
                    + walk(e, start, r, x, s) * e.cover[start + r])
                    / e.cover[i]
            }
        }
        let trees: f64 = (0..e.n_trees())
            .map(|t| walk(e, e.tree_offsets[t], 0, x, subset))
            .sum();
        (trees + e.base) * e.scale
    }

    fn brute_force_shapley(e: &TreeEnsemble, x: &[f32]) -> Vec<f64> {
        let f = e.n_features;
        let fact = |n: usize| (1..=n).map(|v| v as f64).product::<f64>();
        let mut phi = vec![0.0; f];
        for (j, p) in phi.iter_mut().enumerate() {
            for s in 0u32..(1 << f) {
                if s & (1 << j) != 0 {
                    continue;
                }
                let size = s.count_ones() as usize;
                let weight = fact(size) * fact(f - size - 1) / fact(f);
                *p += weight * (conditional(e, x, s | (1 << j)) - conditional(e, x, s));
            }
        }
        phi
    }

    fn rows(seed: u64, n: usize, f: usize) -> Vec<f32> {
        let mut rng = Rng(seed);
        (0..n * f)
            .map(|i| {
                if i % 17 == 5 {
                    f32::NAN
                } else {
                    (rng.next() * 2.4 - 1.2) as f32
                }
            })
            .collect()
    }

    #[test]
    fn tree_shap_equals_brute_force_shapley_values() {
        let f = 5;
        for (seed, strict) in [(7, true), (11, false), (13, true)] {
            let e = forest(seed, 4, 6, f, strict);
            let x = rows(seed + 1, 20, f);
            let phi = e.contributions(&x, Method::TreeShap).unwrap();
            for (r, row) in x.chunks(f).enumerate() {
                let exact = brute_force_shapley(&e, row);
                for j in 0..f {
                    let got = phi[r * (f + 1) + j];
                    assert!(
                        (got - exact[j]).abs() < 1e-9,
                        "row {r} f{j}: {got} vs {}",
                        exact[j]
                    );
                }
                assert!((phi[r * (f + 1) + f] - e.expected_value()).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn precomputed_tables_equal_the_recursive_algorithm() {
        let f = 7;
        let e = forest(17, 20, 7, f, false);
        assert!(e.fast.iter().all(Option::is_some));
        let mut slow = e.clone();
        slow.fast = vec![None; e.n_trees()];
        let x = rows(9, 100, f);
        let a = e.contributions(&x, Method::TreeShap).unwrap();
        let b = slow.contributions(&x, Method::TreeShap).unwrap();
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() < 1e-9, "{u} vs {v}");
        }
        // Deep trees fall back to the recursive algorithm and stay exact.
        let deep = forest(19, 3, 14, 12, true);
        assert!(deep.fast.iter().all(Option::is_none));
    }

    #[test]
    fn precomputed_tables_follow_the_split_convention_on_ties() {
        // Rows whose values sit exactly on thresholds: `<` for XGBoost, `<=` for
        // scikit-learn, and NaN to the default side, as in the recursive algorithm.
        let f = 5;
        for strict in [true, false] {
            let mut e = forest(23, 15, 6, f, strict);
            e.threshold.iter_mut().for_each(|t| *t = *t as f32 as f64);
            e.fast = e.build_fast_tables();
            let mut slow = e.clone();
            slow.fast = vec![None; e.n_trees()];
            let mut rng = Rng(29);
            let x: Vec<f32> = (0..300 * f)
                .map(|i| {
                    let on = (0..e.feature.len())
                        .filter(|&n| !e.is_leaf[n] && e.feature[n] as usize == i % f)
                        .map(|n| e.threshold[n] as f32)
                        .collect::<Vec<_>>();
                    match (i % 11, on.is_empty()) {
                        (0, _) => f32::NAN,
                        (_, false) => on[(rng.next() * on.len() as f64) as usize % on.len()],
                        (_, true) => rng.next() as f32,
                    }
                })
                .collect();
            let a = e.contributions(&x, Method::TreeShap).unwrap();
            let b = slow.contributions(&x, Method::TreeShap).unwrap();
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() < 1e-9, "strict={strict}: {u} vs {v}");
            }
        }
    }

    #[test]
    fn both_methods_are_additive() {
        let f = 6;
        let e = forest(3, 30, 8, f, false);
        let x = rows(5, 200, f);
        for method in [Method::TreeShap, Method::Path] {
            let phi = e.contributions(&x, method).unwrap();
            for (r, row) in x.chunks(f).enumerate() {
                let total: f64 = phi[r * (f + 1)..(r + 1) * (f + 1)].iter().sum();
                let output = e.predict_row(row);
                assert!(
                    (total - output).abs() < 1e-9,
                    "{method:?} row {r}: {total} vs {output}"
                );
            }
        }
    }

    #[test]
    fn path_attribution_credits_only_features_on_the_path() {
        // One split on feature 1: left leaf 0, right leaf 10, equal covers → expected 5.
        let arrays = TreeArrays {
            tree_offsets: &[0, 3],
            feature: &[1, 0, 0],
            threshold: &[0.5, 0.0, 0.0],
            left: &[1, -1, -1],
            right: &[2, -1, -1],
            default_left: &[true, false, false],
            value: &[0.0, 0.0, 10.0],
            cover: &[2.0, 1.0, 1.0],
        };
        let e = TreeEnsemble::new(arrays, 3, true, 0.0, 1.0).unwrap();
        let phi = e.contributions(&[9.0, 1.0, 9.0], Method::Path).unwrap();
        assert_eq!(phi, vec![0.0, 5.0, 0.0, 5.0]);
        let phi = e
            .contributions(&[9.0, f32::NAN, 9.0], Method::TreeShap)
            .unwrap();
        assert_eq!(phi, vec![0.0, -5.0, 0.0, 5.0]);
    }

    #[test]
    fn explanations_are_json_with_the_largest_contributions_first() {
        let f = 4;
        let e = forest(21, 10, 5, f, true);
        let x = rows(2, 3, f);
        let names: Vec<String> = (0..f).map(|j| format!("f{j}")).collect();
        let docs = e
            .explain_json(&x, Method::TreeShap, &names, "log-odds", 2)
            .unwrap();
        assert_eq!(docs.len(), 3);
        for doc in docs {
            let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
            assert_eq!(v["method"], "treeshap");
            let top = v["top"].as_array().unwrap();
            assert!(top.len() <= 2);
            if top.len() == 2 {
                let a = top[0]["contribution"].as_f64().unwrap().abs();
                let b = top[1]["contribution"].as_f64().unwrap().abs();
                assert!(a >= b);
            }
        }
    }

    #[test]
    fn invalid_trees_are_refused() {
        let ok = |left: &[i32], cover: &[f64]| {
            TreeEnsemble::new(
                TreeArrays {
                    tree_offsets: &[0, 3],
                    feature: &[0, 0, 0],
                    threshold: &[0.0; 3],
                    left,
                    right: &[2, -1, -1],
                    default_left: &[false; 3],
                    value: &[0.0; 3],
                    cover,
                },
                1,
                true,
                0.0,
                1.0,
            )
        };
        assert!(ok(&[1, -1, -1], &[2.0, 1.0, 1.0]).is_ok());
        assert!(ok(&[0, -1, -1], &[2.0, 1.0, 1.0]).is_err()); // a cycle
        assert!(ok(&[1, -1, -1], &[2.0, 0.0, 1.0]).is_err()); // zero cover
    }
}
