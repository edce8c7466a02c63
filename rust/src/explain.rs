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

/// Largest number of distinct features on one leaf's path for the precomputed tables.
const FAST_MAX_PATH_FEATURES: usize = 10;
/// Largest total size of the precomputed tables (values) before falling back.
const FAST_MAX_TABLE_VALUES: usize = 16 << 20;

/// One leaf of a [`FastTree`]: its path's splits and its contribution table.
#[derive(Clone, Debug)]
struct FastLeaf {
    /// `(node, goes_left, k)`: the path takes `goes_left` at `node`; `k` indexes the
    /// leaf's distinct path features.
    splits: Vec<(u32, bool, u8)>,
    /// The distinct path features, in `k` order.
    features: Vec<u32>,
    /// `2^m × m` contributions: for each pattern of satisfied features (bit k), the
    /// contribution of each path feature.
    table: Vec<f64>,
}

#[derive(Clone, Debug)]
struct FastTree {
    leaves: Vec<FastLeaf>,
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
            total += tree.leaves.iter().map(|l| l.table.len()).sum::<usize>();
            if total > FAST_MAX_TABLE_VALUES {
                return vec![None; self.n_trees()];
            }
            out.push(Some(tree));
        }
        out
    }

    fn fast_tree(&self, t: usize) -> Option<FastTree> {
        let start = self.tree_offsets[t];
        let mut leaves = Vec::new();
        // Depth-first over root-to-leaf paths, carrying (node, goes left, feature, zero
        // fraction) of every split so far.
        type Split = (u32, bool, u32, f64);
        let mut stack: Vec<(usize, Vec<Split>)> = vec![(0, Vec::new())];
        while let Some((local, path)) = stack.pop() {
            let i = start + local;
            if self.is_leaf[i] {
                leaves.push(fast_leaf(&path, self.value[i])?);
                continue;
            }
            let f = self.feature[i];
            for (child, left) in [(self.left[i], true), (self.right[i], false)] {
                let mut p = path.clone();
                let zero = self.cover[start + child as usize] / self.cover[i];
                p.push((local as u32, left, f, zero));
                stack.push((child as usize, p));
            }
        }
        Some(FastTree { leaves })
    }

    fn fast_shap(
        &self,
        t: usize,
        tree: &FastTree,
        x: &[f32],
        phi: &mut [f64],
        left: &mut Vec<bool>,
    ) {
        let start = self.tree_offsets[t];
        let size = self.tree_offsets[t + 1] - start;
        left.clear();
        left.extend((0..size).map(|local| {
            let i = start + local;
            !self.is_leaf[i] && self.goes_left(i, x[self.feature[i] as usize])
        }));
        for leaf in &tree.leaves {
            let m = leaf.features.len();
            if m == 0 {
                continue;
            }
            let mut pattern = (1usize << m) - 1;
            for &(node, goes_left, k) in &leaf.splits {
                if left[node as usize] != goes_left {
                    pattern &= !(1 << k);
                }
            }
            let row = &leaf.table[pattern * m..(pattern + 1) * m];
            for (k, &f) in leaf.features.iter().enumerate() {
                phi[f as usize] += row[k];
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
        let mut left = Vec::new();
        for t in 0..self.n_trees() {
            let start = self.tree_offsets[t];
            for (row, p) in x.chunks(f).zip(phi.chunks_mut(w)) {
                match (method, &self.fast[t]) {
                    (Method::Path, _) => self.saabas(start, row, p),
                    (Method::TreeShap, Some(tree)) => self.fast_shap(t, tree, row, p, &mut left),
                    (Method::TreeShap, None) => {
                        self.tree_shap(start, 0, row, p, &mut path, 0, 0, 1.0, 1.0, None)
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

/// The table of one leaf: its path's splits merged by feature, and for every pattern of
/// satisfied features the contributions the recursive algorithm would add at that leaf.
fn fast_leaf(path: &[(u32, bool, u32, f64)], value: f64) -> Option<FastLeaf> {
    let mut features: Vec<u32> = Vec::new();
    let mut zeros: Vec<f64> = Vec::new();
    let mut splits = Vec::with_capacity(path.len());
    for &(node, left, f, zero) in path {
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
        splits.push((node, left, k as u8));
    }
    let m = features.len();
    if m > FAST_MAX_PATH_FEATURES {
        return None;
    }
    let mut table = vec![0.0; (1 << m) * m];
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
            table[pattern * m + k] = w * (el.one_fraction - el.zero_fraction) * value;
        }
    }
    Some(FastLeaf {
        splits,
        features,
        table,
    })
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
