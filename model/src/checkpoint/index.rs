//! `model.safetensors.index.json`: `{"metadata": {...}, "weight_map": {tensor: shard file}}`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The weight map as written, duplicates kept (a JSON object may repeat a key; serde_json maps
/// would silently keep the last one).
struct WeightMap(Vec<(String, String)>);

impl<'de> Deserialize<'de> for WeightMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = WeightMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object mapping tensor names to shard file names")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut access: A,
            ) -> std::result::Result<WeightMap, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = access.next_entry::<String, String>()? {
                    entries.push(entry);
                }
                Ok(WeightMap(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: WeightMap,
}

/// A parsed index: which shard holds each tensor.
#[derive(Debug)]
pub(super) struct ShardIndex {
    path: PathBuf,
    /// tensor -> shard file name.
    map: HashMap<String, String>,
    /// The shard file names, sorted.
    shards: Vec<String>,
}

impl ShardIndex {
    pub(super) fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::parse(path, &text)
    }

    /// Parses index JSON `text` (from `path`, named in errors).
    pub(super) fn parse(path: &Path, text: &str) -> Result<Self> {
        let file: IndexFile = serde_json::from_str(text)
            .map_err(|e| ModelError::index(path, format!("invalid index JSON: {e}")))?;
        let mut map = HashMap::new();
        for (tensor, shard) in file.weight_map.0 {
            let plain = !shard.is_empty()
                && shard != "."
                && shard != ".."
                && !shard.contains(['/', '\\'])
                && Path::new(&shard).file_name().is_some();
            if !plain {
                return Err(ModelError::index(
                    path,
                    format!(
                        "tensor `{tensor}` maps to \"{shard}\", which is not a file name in the \
                         checkpoint directory"
                    ),
                ));
            }
            if let Some(prev) = map.insert(tensor.clone(), shard.clone()) {
                return Err(ModelError::index(
                    path,
                    format!("tensor `{tensor}` is listed twice (in {prev} and in {shard})"),
                ));
            }
        }
        if map.is_empty() {
            return Err(ModelError::index(path, "weight_map lists no tensors"));
        }
        let shards: BTreeSet<String> = map.values().cloned().collect();
        Ok(ShardIndex {
            path: path.to_path_buf(),
            map,
            shards: shards.into_iter().collect(),
        })
    }

    /// The shard file names, sorted.
    pub(super) fn shards(&self) -> &[String] {
        &self.shards
    }

    pub(super) fn shard_paths(&self, dir: &Path) -> Vec<PathBuf> {
        self.shards.iter().map(|s| dir.join(s)).collect()
    }

    /// The error for a shard file the index names but the directory lacks.
    pub(super) fn missing_shard(&self, shard: &Path) -> ModelError {
        let file = shard.file_name().map(|f| f.to_string_lossy().into_owned());
        let example = self
            .map
            .iter()
            .filter(|(_, s)| Some(s.as_str()) == file.as_deref())
            .map(|(t, _)| t.as_str())
            .min()
            .unwrap_or("?");
        ModelError::index(
            &self.path,
            format!(
                "names shard {} (for tensor `{example}` and others), which does not exist",
                shard.display()
            ),
        )
    }

    /// Checks that the index and the shards agree: every tensor a shard holds is listed for that
    /// shard, and every listed tensor is in its shard.
    pub(super) fn check_against<'a>(
        &self,
        dir: &Path,
        found: impl Iterator<Item = (&'a str, &'a Path)>,
    ) -> Result<()> {
        let mut found: Vec<(&str, &Path)> = found.collect();
        found.sort();
        for &(tensor, file) in &found {
            match self.map.get(tensor) {
                None => {
                    return Err(ModelError::index(
                        &self.path,
                        format!(
                            "does not list tensor `{tensor}`, which {} holds",
                            file.display()
                        ),
                    ))
                }
                Some(shard) if dir.join(shard) != file => {
                    return Err(ModelError::index(
                        &self.path,
                        format!(
                            "lists tensor `{tensor}` in {shard}, but it is in {}",
                            file.display()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        let present: HashSet<&str> = found.iter().map(|&(t, _)| t).collect();
        let mut listed: Vec<(&String, &String)> = self.map.iter().collect();
        listed.sort();
        if let Some((tensor, shard)) = listed
            .into_iter()
            .find(|(t, _)| !present.contains(t.as_str()))
        {
            return Err(ModelError::index(
                &self.path,
                format!(
                    "lists tensor `{tensor}` in {}, which does not hold it",
                    dir.join(shard).display()
                ),
            ));
        }
        Ok(())
    }
}

/// The shard file names (sorted, each a plain file name) that index JSON `text` maps tensors to,
/// after the checks [`Checkpoint::open`](super::Checkpoint::open) makes on an index; `path` is
/// named in errors. For tools and the fuzz targets.
pub fn index_shard_names(path: &Path, text: &str) -> Result<Vec<String>> {
    Ok(ShardIndex::parse(path, text)?.shards().to_vec())
}
