//! A member's directory tree as a backup holds it, read out of the backup's keys for
//! `meta::MetaServer::import_tree`: a restore as a new volume writes the past tree
//! into the family's live file system, where it shares the objects that are still
//! there and counts them, as a clone does (docs/operations.md, "Metadata backups").

use super::format::{Key, Kind};
use std::collections::{HashMap, HashSet};

/// JuiceFS's chunk size: a file of length L has chunk lists 0..=L/CHUNK.
const CHUNK: u64 = 64 << 20;

/// One file, directory or link of the tree, with what the import writes for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub ino: u64,
    pub attr: Vec<u8>,
    pub symlink: Option<Vec<u8>>,
    /// Extended attributes, name and value alternating.
    pub xattrs: Vec<Vec<u8>>,
    /// A directory's usage statistics: space, data length, inodes.
    pub stats: Option<[Vec<u8>; 3]>,
    /// (chunk index, slices of 24 bytes).
    pub chunks: Vec<(u64, Vec<Vec<u8>>)>,
}

/// A tree: its nodes (the top first) and entries (directory, name, type, inode).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    pub nodes: Vec<Node>,
    pub entries: Vec<(u64, Vec<u8>, u8, u64)>,
    /// The top's directory quota record (`dirQuota`), if it has one.
    pub quota: Option<Vec<u8>>,
}

struct Index<'a> {
    keys: HashMap<&'a [u8], &'a Key>,
}

impl<'a> Index<'a> {
    fn get(&self, name: &str) -> Option<&'a Key> {
        self.keys.get(name.as_bytes()).copied()
    }
    fn string(&self, name: &str) -> Option<&'a [u8]> {
        self.get(name).filter(|k| k.kind == Kind::String)?.elements.first().map(Vec::as_slice)
    }
    fn hash_field(&self, name: &str, field: &[u8]) -> Option<&'a [u8]> {
        let k = self.get(name).filter(|k| k.kind == Kind::Hash)?;
        k.elements.chunks(2).find(|p| p[0] == field).and_then(|p| p.get(1)).map(Vec::as_slice)
    }
    /// A directory's entries: (name, type, inode).
    fn entries(&self, dir: u64) -> Vec<(Vec<u8>, u8, u64)> {
        let Some(k) = self.get(&format!("d{dir}")).filter(|k| k.kind == Kind::Hash) else {
            return Vec::new();
        };
        k.elements
            .chunks(2)
            .filter_map(|p| {
                let e = p.get(1)?;
                (e.len() == 9)
                    .then(|| (p[0].clone(), e[0], u64::from_be_bytes(e[1..9].try_into().expect("8"))))
            })
            .collect()
    }
}

/// The tree at `path` (components below the root) in the backup's `keys`; refuses
/// trees of more than `max_entries` entries, as a snapshot does.
pub fn export(keys: &[Key], path: &[&str], max_entries: u64) -> Result<Tree, String> {
    let idx = Index { keys: keys.iter().map(|k| (k.name.as_slice(), k)).collect() };
    let mut top = 1u64;
    for name in path {
        top = idx
            .entries(top)
            .into_iter()
            .find(|(n, t, _)| n == name.as_bytes() && *t == 2)
            .map(|(_, _, ino)| ino)
            .ok_or_else(|| format!("the backup has no directory /{}", path.join("/")))?;
    }
    let mut tree = Tree::default();
    let mut seen = HashSet::from([top]);
    let mut order = vec![top];
    let mut head = 0;
    while head < order.len() {
        let dir = order[head];
        head += 1;
        if dir != top && !is_dir(&idx, dir) {
            continue;
        }
        for (name, t, ino) in idx.entries(dir) {
            tree.entries.push((dir, name, t, ino));
            if tree.entries.len() as u64 > max_entries {
                return Err(format!("the tree holds more than {max_entries} entries (--max-entries)"));
            }
            if seen.insert(ino) {
                order.push(ino);
            }
        }
    }
    for ino in order {
        let attr = idx.string(&format!("i{ino}")).ok_or_else(|| format!("inode {ino} has no attributes"))?;
        if attr.len() < 71 {
            return Err(format!("inode {ino} has {} bytes of attributes", attr.len()));
        }
        let length = u64::from_be_bytes(attr[51..59].try_into().expect("8"));
        let kind = attr[1] >> 4;
        let chunks = if kind == 1 && length > 0 {
            (0..=length / CHUNK)
                .filter_map(|c| {
                    let k = idx.get(&format!("c{ino}_{c}")).filter(|k| k.kind == Kind::List)?;
                    Some((c, k.elements.clone()))
                })
                .collect()
        } else {
            Vec::new()
        };
        let field = ino.to_string();
        let stat = |h: &str| idx.hash_field(h, field.as_bytes()).map(<[u8]>::to_vec);
        let stats = match (stat("dirUsedSpace"), stat("dirDataLength"), stat("dirUsedInodes")) {
            (Some(a), Some(b), Some(c)) if kind == 2 => Some([a, b, c]),
            _ => None,
        };
        tree.nodes.push(Node {
            ino,
            attr: attr.to_vec(),
            symlink: (kind == 3).then(|| idx.string(&format!("s{ino}")).map(<[u8]>::to_vec)).flatten(),
            xattrs: idx.get(&format!("x{ino}")).map(|k| k.elements.clone()).unwrap_or_default(),
            stats,
            chunks,
        });
    }
    tree.quota = idx.hash_field("dirQuota", top.to_string().as_bytes()).map(<[u8]>::to_vec);
    Ok(tree)
}

fn is_dir(idx: &Index<'_>, ino: u64) -> bool {
    idx.string(&format!("i{ino}")).is_some_and(|a| a.len() > 1 && a[1] >> 4 == 2)
}

impl Tree {
    /// The import script's arguments after its destination (see tree_import.lua).
    pub fn to_args(&self) -> Vec<Vec<u8>> {
        let mut a: Vec<Vec<u8>> = Vec::new();
        let n = |v: u64| v.to_string().into_bytes();
        a.push(n(self.nodes.len() as u64));
        for nd in &self.nodes {
            a.push(n(nd.ino));
            a.push(nd.attr.clone());
            a.push(n(nd.symlink.is_some() as u64));
            a.push(nd.symlink.clone().unwrap_or_default());
            a.push(n(nd.xattrs.len() as u64 / 2));
            a.extend(nd.xattrs.iter().cloned());
            match &nd.stats {
                Some(s) => {
                    a.push(n(1));
                    a.extend(s.iter().cloned());
                }
                None => a.push(n(0)),
            }
            a.push(n(nd.chunks.len() as u64));
            for (index, slices) in &nd.chunks {
                a.push(n(*index));
                a.push(n(slices.len() as u64));
                a.extend(slices.iter().cloned());
            }
        }
        a.push(n(self.entries.len() as u64));
        for (dir, name, t, ino) in &self.entries {
            a.extend([n(*dir), name.clone(), n(*t as u64), n(*ino)]);
        }
        match &self.quota {
            Some(q) => a.extend([n(1), q.clone()]),
            None => a.extend([n(0), Vec::new()]),
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u8, length: u64) -> Vec<u8> {
        let mut a = vec![0u8; 72];
        a[1] = kind << 4;
        a[51..59].copy_from_slice(&length.to_be_bytes());
        a
    }
    fn entry(t: u8, ino: u64) -> Vec<u8> {
        [&[t][..], &ino.to_be_bytes()].concat()
    }
    fn key(name: &str, kind: Kind, elements: Vec<Vec<u8>>) -> Key {
        Key { name: name.as_bytes().to_vec(), kind, elements }
    }

    #[test]
    fn a_members_tree_is_read_out_of_a_backup() {
        // / -> .kelp/v/t (inode 3) -> a (file 4, hard-linked as b) and s (dir 5).
        let keys = vec![
            key("d1", Kind::Hash, vec![b".kelp".to_vec(), entry(2, 2), b"other".to_vec(), entry(1, 9)]),
            key("d2", Kind::Hash, vec![b"v".to_vec(), entry(2, 6)]),
            key("d6", Kind::Hash, vec![b"t".to_vec(), entry(2, 3)]),
            key(
                "d3",
                Kind::Hash,
                vec![b"a".to_vec(), entry(1, 4), b"b".to_vec(), entry(1, 4), b"s".to_vec(), entry(2, 5)],
            ),
            key("i3", Kind::String, vec![attr(2, 4096)]),
            key("i4", Kind::String, vec![attr(1, 10)]),
            key("i5", Kind::String, vec![attr(2, 4096)]),
            key("c4_0", Kind::List, vec![vec![7; 24]]),
            key("dirUsedSpace", Kind::Hash, vec![b"3".to_vec(), b"8192".to_vec()]),
            key("dirDataLength", Kind::Hash, vec![b"3".to_vec(), b"10".to_vec()]),
            key("dirUsedInodes", Kind::Hash, vec![b"3".to_vec(), b"2".to_vec()]),
            key("dirQuota", Kind::Hash, vec![b"3".to_vec(), vec![1; 16]]),
        ];
        let tree = export(&keys, &[".kelp", "v", "t"], 100).unwrap();
        assert_eq!(tree.nodes.iter().map(|n| n.ino).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert_eq!(tree.entries.len(), 3, "{:?}", tree.entries);
        assert_eq!(tree.nodes[1].chunks, vec![(0, vec![vec![7; 24]])]);
        assert_eq!(tree.nodes[0].stats.as_ref().unwrap()[0], b"8192");
        assert_eq!(tree.quota, Some(vec![1; 16]));
        assert!(export(&keys, &[".kelp", "v", "t"], 2).unwrap_err().contains("more than 2"));
        assert!(export(&keys, &[".kelp", "v", "gone"], 100).is_err());
        let args = tree.to_args();
        assert_eq!(args[0], b"3");
        assert_eq!(args.last().unwrap(), &vec![1u8; 16]);
    }
}
