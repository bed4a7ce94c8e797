import json,sys,re,collections
d=json.load(open(sys.argv[1])); N=float(sys.argv[2]) if len(sys.argv)>2 else 11000
ftbl=d['ftbl']
def fn(f):
    m=re.search(r'0x[0-9a-f]+: (.*?) \((.*)\)$',f)
    return (m.group(1),m.group(2)) if m else (f,'')
detail=collections.Counter()
for pp in d['pps']:
    per=pp['tbk']/N
    if per<0.005: continue
    names=[fn(ftbl[i])[0] for i in pp['fs']]
    # innermost proxy frame index
    idx=next((i for i,n in enumerate(names) if 'proxy::' in n and 'Timers::within' not in n and 'poll_fn' not in n), None)
    if idx is None:
        key=('(no proxy frame)', next((n for n in names if re.search(r'(quinn|h3|tokio)',n)), names[-1])[:100])
    else:
        inner=[n for n in names[:idx] if not re.search(r'(poll_fn|Timers::within|core::future|{{closure}}$)',n) or 'h3::' in n or 'quinn' in n]
        key=(names[idx][:100], (inner[-1] if inner else names[0])[:110])
    detail[key]+=per
for k,v in sorted(detail.items(), key=lambda kv:-kv[1]):
    if v>=0.01: print(f"{v:7.3f}  {k[0]}\n           -> {k[1]}")
print("total",sum(detail.values()))
