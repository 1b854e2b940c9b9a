#!/usr/bin/env python3
"""Hygiene gate: no module cycle inside any crate under crates/.

A module's edges are the crate modules its code names (`crate::m`, `use crate::{m, ..}`), comments
left out; a file under `src/m/` counts as part of `m` (parent and child may name each other).
Prints each crate and its cycles; exits 1 if any crate has one.
"""
import os, re, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'crates')
bad = False
for c in sorted(os.listdir(root)):
    src=os.path.join(root,c,'src')
    if not os.path.isdir(src): continue
    mods={}
    for dp,_,fs in os.walk(src):
        for f in fs:
            if not f.endswith('.rs'): continue
            rel=os.path.relpath(os.path.join(dp,f),src)
            top=rel.split(os.sep)[0].replace('.rs','')
            if top in ('lib','main'): continue
            txt=open(os.path.join(dp,f)).read()
            txt=re.sub(r'//[^\n]*','',txt)
            deps=set(re.findall(r'crate::([a-z_0-9]+)',txt))
            for grp in re.findall(r'use crate::\{([^}]*)\}',txt):
                deps|=set(re.findall(r'(?:^|,)\s*([a-z_0-9]+)',grp))
            mods.setdefault(top,set()).update(d for d in deps if d!=top)
    names=set(mods)
    g={m:{d for d in ds if d in names} for m,ds in mods.items()}
    # find cycles via DFS
    color={};cyc=[]
    def dfs(u,stack):
        color[u]=1;stack.append(u)
        for v in g[u]:
            if color.get(v)==1: cyc.append(stack[stack.index(v):]+[v])
            elif not color.get(v): dfs(v,stack)
        stack.pop();color[u]=2
    for m in g:
        if not color.get(m): dfs(m,[])
    if cyc:
        bad = True
        print(f'{c}: module cycle(s): ' + '; '.join(' -> '.join(x) for x in cyc[:5]))
if bad:
    sys.exit(1)
print('no module cycle in any crate')
