//! The task table: the tasks of the multi-task PASCAL-Context and NYUD-v2 benchmarks
//! by name, and the `name[:kind[:channels]]` lists the command line takes.

use crate::error::{invalid, Context, Error, Result};
use vmt_registry::bundle::{TaskKind, TaskSpec};

/// Known task names with their kind and output channels: PASCAL-Context's semseg (21
/// classes), human_parts (7), saliency and normals, and depth (NYUD-v2).
pub const KNOWN_TASKS: [(&str, TaskKind, usize); 5] = [
    ("semseg", TaskKind::Segmentation, 21),
    ("human_parts", TaskKind::Segmentation, 7),
    ("sal", TaskKind::Saliency, 1),
    ("normals", TaskKind::Normals, 3),
    ("depth", TaskKind::Depth, 1),
];

/// The spec of a known task name.
pub fn known_task(name: &str) -> Option<TaskSpec> {
    KNOWN_TASKS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(n, k, c)| TaskSpec::new(n, k, c))
}

/// Parses `semseg,human_parts,sal,normals` or `name:kind[:channels]` entries; known
/// names need no kind.
///
/// ```
/// use vmt_hub::tasks::parse_tasks;
/// let t = parse_tasks("semseg,edges:segmentation:2").unwrap();
/// assert_eq!((t[0].channels, t[1].channels), (21, 2));
/// assert!(parse_tasks("mystery").is_err());
/// ```
///
/// # Errors
/// An unknown name without a kind, an unknown kind, a segmentation task without its
/// number of classes.
pub fn parse_tasks(list: &str) -> Result<Vec<TaskSpec>> {
    list.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|entry| {
            let parts: Vec<&str> = entry.trim().split(':').collect();
            let name = parts[0];
            if parts.len() == 1 {
                return known_task(name).with_context(|| {
                    format!("task {entry:?}: unknown name; write NAME:KIND[:CHANNELS] (kinds: segmentation, saliency, normals, depth)")
                });
            }
            if parts.len() > 3 {
                invalid!("task {entry:?}: write NAME[:KIND[:CHANNELS]]");
            }
            let kind: TaskKind = parts[1].parse().map_err(Error::Invalid)?;
            let channels = match parts.get(2) {
                Some(c) => c
                    .parse()
                    .map_err(|e| Error::Invalid(format!("task {entry:?}: channels: {e}")))?,
                None => kind.fixed_channels().with_context(|| {
                    format!("task {entry:?}: a segmentation task needs its number of classes (NAME:segmentation:N)")
                })?,
            };
            Ok(TaskSpec::new(name, kind, channels))
        })
        .collect()
}

/// The tasks a benchmark's `--tasks` names: a count `n` (see [`bench_tasks`]) or a
/// comma-separated list (see [`parse_tasks`]).
///
/// # Errors
/// A list entry that does not parse.
pub fn bench_task_selection(tasks: &str) -> Result<Vec<TaskSpec>> {
    match tasks.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(bench_tasks(n)),
        Ok(_) => Err(Error::Invalid("--tasks 0: at least one task".into())),
        Err(_) => parse_tasks(tasks),
    }
}

/// `n` tasks for benchmarks: the known ones in order, then more 21-class segmentations.
pub fn bench_tasks(n: usize) -> Vec<TaskSpec> {
    (0..n)
        .map(|i| match KNOWN_TASKS.get(i) {
            Some(&(name, kind, c)) => TaskSpec::new(name, kind, c),
            None => TaskSpec::new(&format!("seg{i}"), TaskKind::Segmentation, 21),
        })
        .collect()
}
