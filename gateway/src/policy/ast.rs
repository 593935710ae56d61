//! What the loader needs to know from the parsed Rego: the rule paths (to find `test_*`
//! rules) and the reference graph between rules and functions (to reject recursion, which
//! regorus accepts and which can overflow the stack and abort the process).

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Expr, Literal, Module, Query, Rule, RuleHead};
use regorus::Value;

/// Full paths (`data.pkg.rule`) of every rule and function, each once, sorted.
pub fn rule_paths(modules: &[regorus::unstable::Ref<Module>]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for m in modules {
        let Some(pkg) = package_path(m) else { continue };
        for r in &m.policy {
            if let Some(name) = rule_name(r) {
                out.insert(format!("{pkg}.{name}"));
            }
        }
    }
    out
}

/// Builtins whose result is not a function of their arguments: the clock, randomness and
/// the host. A decision must depend on its input alone (the decision time is in it).
pub const IMPURE_BUILTINS: &[&str] = &["time.now_ns", "rand.intn", "uuid.rfc4122", "opa.runtime"];

/// The first call of an impure builtin, as `data.pkg.rule calls time.now_ns`.
pub fn impure_call(modules: &[regorus::unstable::Ref<Module>]) -> Option<String> {
    for m in modules {
        let Some(pkg) = package_path(m) else { continue };
        for r in &m.policy {
            let mut refs = Vec::new();
            rule_refs(r, &mut refs);
            if let Some(name) = refs
                .iter()
                .map(|p| p.join("."))
                .find(|p| IMPURE_BUILTINS.contains(&p.as_str()))
            {
                let rule = rule_name(r).unwrap_or_else(|| "?".into());
                return Some(format!("{pkg}.{rule} calls {name}"));
            }
        }
    }
    None
}

/// The first cycle among rules and functions, as `a -> b -> a`, if any.
pub fn find_cycle(modules: &[regorus::unstable::Ref<Module>]) -> Option<String> {
    let graph = reference_graph(modules);
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    for start in graph.keys() {
        let mut stack: Vec<&str> = Vec::new();
        if let Some(c) = dfs(&graph, start, &mut state, &mut stack) {
            return Some(c);
        }
    }
    None
}

/// Depth-first search; its depth is bounded by the number of rules in the bundle.
fn dfs<'a>(
    graph: &'a BTreeMap<String, BTreeSet<String>>,
    node: &'a str,
    state: &mut BTreeMap<&'a str, u8>,
    stack: &mut Vec<&'a str>,
) -> Option<String> {
    match state.get(node) {
        Some(2) => return None,
        Some(1) => {
            let from = stack.iter().position(|n| *n == node).unwrap_or(0);
            let mut path: Vec<&str> = stack[from..].to_vec();
            path.push(node);
            return Some(path.join(" -> "));
        }
        _ => {}
    }
    state.insert(node, 1);
    stack.push(node);
    if let Some(edges) = graph.get(node) {
        for next in edges {
            if let Some(c) = dfs(graph, next, state, stack) {
                return Some(c);
            }
        }
    }
    stack.pop();
    state.insert(node, 2);
    None
}

fn reference_graph(
    modules: &[regorus::unstable::Ref<Module>],
) -> BTreeMap<String, BTreeSet<String>> {
    let nodes = rule_paths(modules);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in modules {
        let Some(pkg) = package_path(m) else { continue };
        let scope = Scope::new(m, &pkg);
        for r in &m.policy {
            let Some(name) = rule_name(r) else { continue };
            let from = format!("{pkg}.{name}");
            let mut refs = Vec::new();
            rule_refs(r, &mut refs);
            let edges = graph.entry(from).or_default();
            for path in refs {
                if let Some(target) = scope.resolve(&path, &nodes) {
                    edges.insert(target);
                }
            }
        }
    }
    graph
}

/// How names are resolved in one module: `data.` paths as they are, import aliases
/// expanded, anything else relative to the package.
struct Scope {
    package: String,
    imports: BTreeMap<String, Vec<String>>,
}

impl Scope {
    fn new(m: &Module, package: &str) -> Scope {
        let mut imports = BTreeMap::new();
        for i in &m.imports {
            let Some(path) = ref_path(&i.refr) else {
                continue;
            };
            let alias = match &i.r#as {
                Some(span) => span.text().to_string(),
                None => match path.last() {
                    Some(last) => last.clone(),
                    None => continue,
                },
            };
            imports.insert(alias, path);
        }
        Scope {
            package: package.to_string(),
            imports,
        }
    }

    /// The rule or function a reference names, if it names one.
    fn resolve(&self, path: &[String], nodes: &BTreeSet<String>) -> Option<String> {
        let first = path.first()?;
        let full: Vec<String> = if first == "data" {
            path.to_vec()
        } else if first == "input" {
            return None;
        } else if let Some(prefix) = self.imports.get(first) {
            prefix.iter().chain(path.iter().skip(1)).cloned().collect()
        } else {
            let mut p: Vec<String> = self.package.split('.').map(str::to_string).collect();
            p.extend(path.iter().cloned());
            p
        };
        // The longest prefix that is a rule: `common.deny(x).reasons` names `common.deny`.
        (1..=full.len())
            .rev()
            .map(|n| full[..n].join("."))
            .find(|candidate| nodes.contains(candidate))
    }
}

fn package_path(m: &Module) -> Option<String> {
    let mut p = ref_path(&m.package.refr)?;
    p.insert(0, "data".to_string());
    Some(p.join("."))
}

fn rule_name(r: &Rule) -> Option<String> {
    let refr = match r {
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, .. }
            | RuleHead::Set { refr, .. }
            | RuleHead::Func { refr, .. } => refr,
        },
        Rule::Default { refr, .. } => refr,
    };
    ref_path(refr).and_then(|p| p.into_iter().next())
}

/// `a.b["c"]` as `["a", "b", "c"]`; stops at the first non-constant index.
fn ref_path(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Var { value, .. } => Some(vec![value_str(value)?]),
        Expr::RefDot { refr, field, .. } => {
            let mut p = ref_path(refr)?;
            p.push(value_str(&field.1)?);
            Some(p)
        }
        Expr::RefBrack { refr, index, .. } => {
            let mut p = ref_path(refr)?;
            if let Expr::String { value, .. } = index.as_ref() {
                p.push(value_str(value)?);
            }
            Some(p)
        }
        _ => None,
    }
}

fn value_str(v: &Value) -> Option<String> {
    v.as_string().ok().map(|s| s.to_string())
}

fn rule_refs(r: &Rule, out: &mut Vec<Vec<String>>) {
    match r {
        Rule::Spec { head, bodies, .. } => {
            match head {
                RuleHead::Compr { assign, .. } | RuleHead::Func { assign, .. } => {
                    if let Some(a) = assign {
                        expr_refs(&a.value, out);
                    }
                }
                RuleHead::Set { key, .. } => {
                    if let Some(k) = key {
                        expr_refs(k, out);
                    }
                }
            }
            for b in bodies {
                if let Some(a) = &b.assign {
                    expr_refs(&a.value, out);
                }
                query_refs(&b.query, out);
            }
        }
        Rule::Default { value, .. } => expr_refs(value, out),
    }
}

fn query_refs(q: &Query, out: &mut Vec<Vec<String>>) {
    for s in &q.stmts {
        match &s.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key {
                    expr_refs(k, out);
                }
                expr_refs(value, out);
                expr_refs(collection, out);
            }
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => expr_refs(expr, out),
            Literal::Every { domain, query, .. } => {
                expr_refs(domain, out);
                query_refs(query, out);
            }
        }
        for w in &s.with_mods {
            expr_refs(&w.r#as, out);
        }
    }
}

fn expr_refs(e: &Expr, out: &mut Vec<Vec<String>>) {
    match e {
        Expr::Var { .. } | Expr::RefDot { .. } => {
            if let Some(p) = ref_path(e) {
                out.push(p);
            }
            if let Expr::RefDot { refr, .. } = e {
                nested_refs(refr, out);
            }
        }
        Expr::RefBrack { refr, index, .. } => {
            if let Some(p) = ref_path(e) {
                out.push(p);
            }
            nested_refs(refr, out);
            expr_refs(index, out);
        }
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            for i in items {
                expr_refs(i, out);
            }
        }
        Expr::Object { fields, .. } => {
            for (_, k, v) in fields {
                expr_refs(k, out);
                expr_refs(v, out);
            }
        }
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            expr_refs(term, out);
            query_refs(query, out);
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => {
            expr_refs(key, out);
            expr_refs(value, out);
            query_refs(query, out);
        }
        Expr::Call { fcn, params, .. } => {
            if let Some(p) = ref_path(fcn) {
                out.push(p);
            }
            for p in params {
                expr_refs(p, out);
            }
        }
        Expr::UnaryExpr { expr, .. } => expr_refs(expr, out),
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            expr_refs(lhs, out);
            expr_refs(rhs, out);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => {
            if let Some(k) = key {
                expr_refs(k, out);
            }
            expr_refs(value, out);
            expr_refs(collection, out);
        }
        // Scalars (and any extension expression) name no rule.
        _ => {}
    }
}

/// Non-constant indexes inside a reference chain, e.g. `x` in `a[x].b`.
fn nested_refs(e: &Expr, out: &mut Vec<Vec<String>>) {
    match e {
        Expr::RefDot { refr, .. } => nested_refs(refr, out),
        Expr::RefBrack { refr, index, .. } => {
            nested_refs(refr, out);
            expr_refs(index, out);
        }
        Expr::Var { .. } => {}
        other => expr_refs(other, out),
    }
}
