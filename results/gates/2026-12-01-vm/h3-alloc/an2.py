import json,sys,re,collections
d=json.load(open(sys.argv[1])); N=float(sys.argv[2]) if len(sys.argv)>2 else 11000
ftbl=d['ftbl']
def fn(f):
    m=re.search(r'0x[0-9a-f]+: (.*?) \((.*)\)$',f)
    return (m.group(1),m.group(2)) if m else (f,'')
cats=collections.Counter(); detail=collections.defaultdict(collections.Counter)
for pp in d['pps']:
    per=pp['tbk']/N
    if per<0.005: continue
    names=[fn(ftbl[i]) for i in pp['fs']]
    first=None; prox=None
    for name,loc in names:
        if first is None and re.match(r'(<)?(h3_quinn|h3|quinn_proto|quinn|http|tokio|bytes|hashbrown)::',name.lstrip('<')) and not name.startswith('<T as'):
            first=name
        if prox is None and 'proxy::' in name:
            prox=name
    crate=re.match(r'<?([a-z0-9_]+)::',(first or 'other::').lstrip('<')).group(1)
    key=(crate, (first or '?')[:110], (prox or '-')[:90])
    cats[crate]+=per; detail[crate][key]+=per
for c,v in cats.most_common():
    print(f"{v:8.3f} {c}")
    for k,vv in detail[c].most_common():
        if vv>=0.01: print(f"      {vv:7.3f}  {k[1]}   <- {k[2]}")
print("total",sum(cats.values()))
