//! What a manifest sets for each component, read from its command sequences: the merged
//! parameters ([`super::Manifest::component_parameters`]) and the views that keep try-each
//! alternatives apart ([`super::Manifest::component_views`]).

use alloc::vec::Vec;

use super::{cmd, param, CommandArg, CommandSequence, Manifest, Parameters, Severable};

/// What a manifest sets for one component: the parameters every path sets, and, when
/// try-each offers alternatives (A/B slots), what each alternative sets on top.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ComponentView {
    /// Parameters set outside any try-each (they hold whichever alternative runs).
    pub parameters: Parameters,
    /// One entry per try-each alternative: the parameters it sets or changes. Alternatives
    /// of several try-each (shared sequence, install) are matched by their component-slot
    /// (riot09: component-offset) when they set one, else by position.
    pub alternatives: Vec<Parameters>,
}

impl Manifest {
    /// Like [`Manifest::component_parameters`], but keeping try-each alternatives apart
    /// instead of merging them (a two-slot manifest has one URI and digest per slot).
    pub fn component_views(&self) -> Vec<(usize, ComponentView)> {
        let mut out = alloc::vec![ComponentView::default(); self.common.components.len().max(1)];
        let mut current = alloc::vec![0usize];
        if let Some(s) = &self.common.shared_sequence {
            walk_views(s, &mut out, &mut current);
        }
        for s in [&self.payload_fetch, &self.install].into_iter().flatten() {
            if let Severable::Present(s) = s {
                walk_views(s, &mut out, &mut alloc::vec![0usize]);
            }
        }
        out.into_iter().enumerate().collect()
    }
}

fn apply(code: i64, p: &Parameters, target: &mut Parameters) {
    for (k, v) in &p.0 {
        // set-parameters does not override; override-parameters does.
        if code == cmd::SET_PARAMETERS && target.get(*k).is_some() {
            continue;
        }
        target.set(*k, v.clone());
    }
}

fn walk_views(s: &CommandSequence, out: &mut [ComponentView], current: &mut Vec<usize>) {
    for c in &s.0 {
        match &c.arg {
            CommandArg::Index(i) => *current = i.indices(out.len()),
            CommandArg::Params(p) => {
                for idx in current.iter() {
                    if let Some(view) = out.get_mut(*idx) {
                        apply(c.code, p, &mut view.parameters);
                        // An override after a try-each replaces what the alternatives set.
                        if c.code != cmd::SET_PARAMETERS {
                            for alt in &mut view.alternatives {
                                for (k, v) in &p.0 {
                                    if alt.get(*k).is_some() {
                                        alt.set(*k, v.clone());
                                    }
                                }
                            }
                        }
                    }
                }
            }
            CommandArg::Sequence(inner) => walk_views(inner, out, current),
            CommandArg::TryEach { alternatives, .. } => {
                for (j, a) in alternatives.iter().enumerate() {
                    // What this alternative sets (nested try-each merged, as before).
                    let mut set = [Parameters::default()];
                    walk(a, &mut set, &mut alloc::vec![0usize]);
                    let [set] = set;
                    for idx in current.iter() {
                        let Some(view) = out.get_mut(*idx) else { continue };
                        let slot = set.get(param::COMPONENT_SLOT);
                        let at = match slot {
                            Some(slot) => view
                                .alternatives
                                .iter()
                                .position(|alt| alt.get(param::COMPONENT_SLOT) == Some(slot)),
                            None => (j < view.alternatives.len()).then_some(j),
                        };
                        let at = match at {
                            Some(at) => at,
                            None => {
                                view.alternatives.push(Parameters::default());
                                view.alternatives.len() - 1
                            }
                        };
                        if let Some(alt) = view.alternatives.get_mut(at) {
                            for (k, v) in &set.0 {
                                alt.set(*k, v.clone());
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

pub(super) fn walk(s: &CommandSequence, out: &mut [Parameters], current: &mut Vec<usize>) {
    for c in &s.0 {
        match &c.arg {
            CommandArg::Index(i) => *current = i.indices(out.len()),
            CommandArg::Params(p) => {
                for idx in current.iter() {
                    if let Some(target) = out.get_mut(*idx) {
                        for (k, v) in &p.0 {
                            // set-parameters does not override; override-parameters does.
                            if c.code == cmd::SET_PARAMETERS && target.get(*k).is_some() {
                                continue;
                            }
                            target.set(*k, v.clone());
                        }
                    }
                }
            }
            CommandArg::Sequence(inner) => walk(inner, out, current),
            CommandArg::TryEach { alternatives, .. } => {
                for a in alternatives {
                    walk(a, out, current);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ComponentIndex;

    #[test]
    fn component_index_selections() {
        assert_eq!(ComponentIndex::All.indices(3), [0, 1, 2]);
        assert_eq!(ComponentIndex::Many(alloc::vec![2, 0, 2, 9]).indices(3), [0, 2]);
        assert_eq!(ComponentIndex::One(7).indices(3), [7], "kept as given");
        assert_eq!(ComponentIndex::One(u64::MAX).indices(3), [usize::MAX]);
    }
}
