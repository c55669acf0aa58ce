//! Keyed maps: one map per node, chosen by a key that each query carries.
//!
//! Two kinds share this model. `tree`: a query's key is its tree id, looked up
//! exactly. `hierarchical`: a query's key is a path `a/b/c`, served by its deepest
//! fitted ancestor (`a/b/c`, else `a/b`, else `a`). Either way a key that finds no
//! node falls back to the root node `""`, which every model has. The queries are
//! grouped by node and each group goes through one GEMM with its node's map.

use std::collections::{BTreeMap, HashMap};

use ndarray::{Array2, ArrayView2, ArrayView3};

use crate::blend;
use crate::error::{format_err, invalid, Result};
use crate::format::{ModelFile, Tensor};
use crate::linalg;
use crate::model::{names, stack, Model};
use crate::packed::PackedMatrix;
use crate::precision::Precision;
use crate::routing::Routing;

/// How a query's key finds its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRule {
    /// Exact lookup of a tree id (`tree` kind).
    Tree,
    /// Deepest fitted ancestor of a `/`-separated path (`hierarchical` kind).
    Hierarchical,
}

/// Per-node maps served by key.
#[derive(Clone, Debug)]
pub struct Keyed {
    rule: KeyRule,
    nodes: Vec<String>,
    index: HashMap<String, usize>,
    root: usize,
    maps: Vec<PackedMatrix>,
    dim_in: usize,
    dim_out: usize,
}

impl Keyed {
    /// From `nodes` (M distinct keys, `""` among them) and `maps` (M, D_in, D_out;
    /// packed here for the serving kernel, stored at `precision`), map `m` belonging
    /// to `nodes[m]`.
    pub fn new(rule: KeyRule, nodes: Vec<String>, maps: ArrayView3<f32>, precision: Precision) -> Result<Self> {
        let (m, dim_in, dim_out) = maps.dim();
        if nodes.len() != m {
            return format_err(format!("{} node keys for {m} maps in W", nodes.len()));
        }
        let mut index = HashMap::with_capacity(m);
        for (i, key) in nodes.iter().enumerate() {
            if index.insert(key.clone(), i).is_some() {
                return format_err(format!("node key {key:?} appears twice"));
            }
        }
        let Some(&root) = index.get("") else {
            return format_err("no root node: the node keys must include \"\" (the fallback map)");
        };
        let maps = maps.outer_iter().map(|w| PackedMatrix::pack_as(w, precision)).collect();
        Ok(Keyed { rule, nodes, index, root, maps, dim_in, dim_out })
    }

    pub(crate) fn from_model(m: &ModelFile, rule: KeyRule) -> Result<Self> {
        let Some(nodes) = m.config.nodes.clone() else {
            return format_err(format!("a `{}` config needs `nodes`", m.config.kind));
        };
        Self::new(rule, nodes, m.tensor("W")?.view3("W")?, m.config.weights_precision())
    }

    /// How keys are resolved.
    pub fn rule(&self) -> KeyRule {
        self.rule
    }

    /// Node keys, in the order of the maps.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Input dimension.
    pub fn dim_in(&self) -> usize {
        self.dim_in
    }

    /// Output dimension.
    pub fn dim_out(&self) -> usize {
        self.dim_out
    }

    /// Index of the node serving `key`: an exact match (and, for paths, the nearest
    /// ancestor obtained by dropping the last `/`-component, repeatedly), else the root.
    fn node_of(&self, key: &str) -> usize {
        let mut key = key;
        loop {
            if let Some(&i) = self.index.get(key) {
                return i;
            }
            match key.rfind('/') {
                Some(cut) if self.rule == KeyRule::Hierarchical => key = &key[..cut],
                _ => return self.root,
            }
        }
    }

    /// Index into [`nodes`](Self::nodes) of the node serving each key.
    pub fn resolve(&self, keys: &[&str]) -> Vec<usize> {
        keys.iter().map(|k| self.node_of(k)).collect()
    }

    /// Project queries `x` (B, D_in) with their `keys` (B) to (B, D_out).
    pub fn project_keyed(&self, x: ArrayView2<f32>, keys: &[&str]) -> Result<Array2<f32>> {
        linalg::check_batch(x, self.dim_in, "queries")?;
        if keys.len() != x.nrows() {
            return invalid(format!("{} keys for {} queries", keys.len(), x.nrows()));
        }
        let routing = Routing {
            offsets: (0..=keys.len()).collect(),
            clusters: self.resolve(keys).into_iter().map(|i| i as u32).collect(),
            weights: vec![1.0; keys.len()],
        };
        Ok(blend::blend_maps(x, &routing, &self.maps))
    }
}

impl Model for Keyed {
    fn kind(&self) -> &'static str {
        match self.rule {
            KeyRule::Tree => "tree",
            KeyRule::Hierarchical => "hierarchical",
        }
    }

    fn dim_in(&self) -> usize {
        self.dim_in
    }

    fn dim_out(&self) -> usize {
        self.dim_out
    }

    fn project(&self, _x: ArrayView2<f32>) -> Result<Array2<f32>> {
        let key = if self.rule == KeyRule::Tree { "tree id" } else { "path like `a/b/c`" };
        invalid(format!("a `{}` model needs keys: one {key} per query", self.kind()))
    }

    fn project_keyed(&self, x: ArrayView2<f32>, keys: &[&str]) -> Result<Array2<f32>> {
        Keyed::project_keyed(self, x, keys)
    }

    fn resolve(&self, keys: &[&str]) -> Result<Vec<String>> {
        Ok(Keyed::resolve(self, keys).into_iter().map(|i| self.nodes[i].clone()).collect())
    }

    fn tensor_names(&self) -> Vec<String> {
        names(&["W"])
    }

    fn tensors(&self) -> BTreeMap<String, Tensor> {
        BTreeMap::from([("W".to_string(), stack(&self.maps, self.dim_in, self.dim_out))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Array3, Axis};

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    /// Node `m`'s map is `(m + 1) * I`, so the output tells which node served a query.
    fn model(rule: KeyRule, nodes: &[&str]) -> Keyed {
        let d = 3;
        let maps = Array3::from_shape_fn((nodes.len(), d, d), |(m, i, j)| if i == j { (m + 1) as f32 } else { 0.0 });
        Keyed::new(rule, keys(nodes), maps.view(), Precision::F32).unwrap()
    }

    #[test]
    fn hierarchical_keys_use_the_deepest_fitted_ancestor() {
        let m = model(KeyRule::Hierarchical, &["", "a", "a/b", "x/y"]);
        let got = m.resolve(&["a/b/c", "a/b", "a/z/b", "a", "x", "x/y/z", "zzz", "", "a/b/"]);
        assert_eq!(got, [2, 2, 1, 1, 0, 3, 0, 0, 2]);
    }

    #[test]
    fn tree_keys_are_exact() {
        let m = model(KeyRule::Tree, &["t1", "", "t2/x"]);
        assert_eq!(m.resolve(&["t1", "t2/x", "t2/x/y", "t2", "t3", ""]), [0, 2, 1, 1, 1, 1]);
    }

    #[test]
    fn projection_applies_each_querys_node_map() {
        let m = model(KeyRule::Hierarchical, &["", "a", "a/b"]);
        let x = Array2::from_shape_fn((5, 3), |(i, j)| (i * 3 + j) as f32 + 1.0);
        let k = ["a/b/c", "q", "a", "a/b", ""];
        let p = m.project_keyed(x.view(), &k).unwrap();
        for (i, node) in m.resolve(&k).into_iter().enumerate() {
            let want = &x.index_axis(Axis(0), i) * (node + 1) as f32;
            assert_eq!(p.row(i), want);
        }
    }

    #[test]
    fn bad_models_and_inputs_are_errors() {
        let maps = Array3::<f32>::zeros((2, 2, 2));
        let cases: [(&[&str], &str); 3] =
            [(&["a", "b"], "root"), (&["", ""], "twice"), (&["", "a", "b"], "3 node keys for 2 maps")];
        for (nodes, msg) in cases {
            let err = Keyed::new(KeyRule::Tree, keys(nodes), maps.view(), Precision::F32).unwrap_err().to_string();
            assert!(err.contains(msg), "{err}");
        }
        let m = model(KeyRule::Tree, &[""]);
        let x = Array2::<f32>::ones((2, 3));
        let err = m.project_keyed(x.view(), &["a"]).unwrap_err().to_string();
        assert!(err.contains("1 keys for 2 queries"), "{err}");
        assert!(m.project_keyed(Array2::<f32>::ones((1, 2)).view(), &["a"]).is_err());
    }

    #[test]
    fn projector_serves_keyed_files_and_asks_for_keys() {
        use crate::format::{Config, Tensor};
        use crate::Projector;
        let file = |kind: &str, nodes: &str| {
            let config = format!(
                r#"{{"format":"projroute","version":1,"kind":"{kind}","dim_in":2,"dim_out":2,"nodes":{nodes}}}"#
            );
            let w = Tensor::new(vec![2, 2, 2], vec![1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 2.0]).unwrap();
            let tensors = [("W".to_string(), w)].into_iter().collect();
            ModelFile { config: Config::from_json(&config).unwrap(), tensors, metadata: Default::default() }
        };
        let p = Projector::from_model(file("hierarchical", r#"["", "a"]"#)).unwrap();
        assert_eq!((p.kind(), p.dim_in(), p.dim_out(), p.n_clusters()), ("hierarchical", 2, 2, None));
        let x = Array2::<f32>::ones((2, 2));
        assert_eq!(p.project_keyed(x.view(), &["a/b", "b"]).unwrap(), ndarray::array![[2.0, 2.0], [1.0, 1.0]]);
        let err = p.project(x.view()).unwrap_err().to_string();
        assert!(err.contains("needs keys: one path"), "{err}");
        assert_eq!(Projector::from_model(file("tree", r#"["", "a"]"#)).unwrap().kind(), "tree");
        for nodes in ["null", r#"["a", "b"]"#, r#"[""]"#] {
            assert!(matches!(Projector::from_model(file("tree", nodes)), Err(crate::Error::Format(_))), "{nodes}");
        }
    }
}
