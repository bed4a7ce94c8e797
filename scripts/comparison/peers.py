"""Each target's config and command line, written from the one description (spec.DESC): the
same upstream, keep-alive to it, access logs off, one worker. The files are kept in the run's
configs/ folder.

The memory phase's variant (`for_memory`, configs/<name>-memory/) is the same config with room
for its largest crowd of idle clients (spec.MEMORY_MAX_CONNECTIONS: this proxy's
`limits.max_connections`, nginx `worker_connections` and `worker_rlimit_nofile`, HAProxy
`maxconn`; Traefik has no such limit) and client idle timeouts (spec.MEMORY_IDLE_TIMEOUT_S)
longer than the hold."""

import os
import resource
import subprocess

from .spec import DESC, MEMORY_IDLE_TIMEOUT_S, MEMORY_MAX_CONNECTIONS


def write_configs(cfgdir, name, port, up_addr, bins, for_valgrind=False, for_memory=False):
    """Write `name`'s config for listen port `port` and upstream `up_addr`; return its argv+env.
    bins: the binaries by target name (proxy, loadgen, traefik, nginx, haproxy). for_memory: the
    memory phase's variant (room for its crowd, idle timeouts longer than the hold)."""
    d = os.path.join(cfgdir, name + ("-valgrind" if for_valgrind else "") + ("-memory" if for_memory else ""))
    conns, idle = MEMORY_MAX_CONNECTIONS, MEMORY_IDLE_TIMEOUT_S
    os.makedirs(d, exist_ok=True)
    listen = f"127.0.0.1:{port}"
    ka = DESC["upstream_keepalive"]
    if name in ("native", "hyper"):
        path = os.path.join(d, "proxy.toml")
        with open(path, "w") as f:
            f.write(f"""# written by scripts/compare.py from its one description
[server]
workers = {DESC['workers']}
{proxy_extra_keys(d, bins['proxy'])}{proxy_memory_keys(d, bins['proxy']) if for_memory else ""}
[[listeners]]
address = "{listen}"

[[routes]]
path_prefix = "/"
upstream = "x"

[upstreams.x]
servers = ["{up_addr}"]
idle_pool_size = {ka}
""")
        return [bins["proxy"], "--config", path, "--workers", str(DESC["workers"]), "--engine", name], {}
    if name == "relay":
        return [bins["loadgen"], "relay", "--listen", listen, "--upstream", up_addr, "--threads", "1",
                "--cpus", DESC["proxy_cpu"]], {}
    if name == "traefik":
        dyn = os.path.join(d, "dynamic.yml")
        with open(dyn, "w") as f:
            f.write(f"""# written by scripts/compare.py from its one description
http:
  routers:
    r:
      rule: "PathPrefix(`/`)"
      entryPoints: [web]
      service: s
  services:
    s:
      loadBalancer:
        servers:
          - url: "http://{up_addr}"
""")
        traefik_mem = f"    transport:\n      respondingTimeouts:\n        idleTimeout: {idle}s\n"
        static = os.path.join(d, "traefik.yml")
        with open(static, "w") as f:
            f.write(f"""# written by scripts/compare.py from its one description
global:
  checkNewVersion: false
  sendAnonymousUsage: false
log:
  level: ERROR
serversTransport:
  maxIdleConnsPerHost: {ka}
entryPoints:
  web:
    address: "{listen}"
{traefik_mem if for_memory else ""}providers:
  file:
    filename: "{dyn}"
    watch: false
""")
        return [bins["traefik"], f"--configFile={static}"], {"GOMAXPROCS": str(DESC["workers"])}
    if name == "nginx":
        os.makedirs(os.path.join(d, "logs"), exist_ok=True)
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        path = os.path.join(d, "nginx.conf")
        master = "master_process off;\n" if for_valgrind else ""
        wc = 16384
        if for_memory:
            nofile = nofile_for(2 * conns + 1024)
            master += f"worker_rlimit_nofile {nofile};\n"
            wc = min(conns + 1024, nofile)
        with open(path, "w") as f:
            f.write(f"""# written by scripts/compare.py from its one description
{master}worker_processes {DESC['workers']};
error_log {d}/logs/error.log error;
pid {d}/nginx.pid;
events {{ worker_connections {wc}; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    keepalive_requests 10000000;
{f"    keepalive_timeout {idle}s;{chr(10)}" if for_memory else ""}    upstream up {{
        server {up_addr};
        keepalive {ka};
        keepalive_requests 10000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")
        return [bins["nginx"], "-p", d, "-c", path, "-g", "daemon off;"], {}
    if name == "haproxy":
        path = os.path.join(d, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(f"""# written by scripts/compare.py from its one description
global
    nbthread {DESC['workers']}
    maxconn {conns if for_memory else 4096}
{"    no strict-limits" + chr(10) if for_memory and nofile_for(2 * conns + 64) < 2 * conns + 64 else ""}
defaults
    mode http
    option http-keep-alive
{f"    maxconn {conns}{chr(10)}" if for_memory else ""}    timeout connect 5s
    timeout client {f"{idle}s" if for_memory else "60s"}
    timeout server 60s
    timeout http-keep-alive {f"{idle}s" if for_memory else "60s"}

frontend fe
    bind {listen}
    default_backend be

backend be
    http-reuse always
    server s1 {up_addr} pool-max-conn {ka}
""")
        return [bins["haproxy"], "-db", "-f", path], {}
    raise ValueError(name)


def nofile_for(wanted):
    """Open files a target may have: `wanted`, capped at this process's hard RLIMIT_NOFILE (a
    container without CAP_SYS_RESOURCE cannot go above it; the children inherit it)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


_PROXY_EXTRA = None


def proxy_extra_keys(d, proxy_bin):
    """Keys that make the proxy match the peers' setup (no config-file watcher, access log off),
    kept only if this proxy build knows them (older builds reject unknown keys)."""
    global _PROXY_EXTRA
    if _PROXY_EXTRA is None:
        extra = 'watch_config = false\n\n[log]\naccess_log = "off"\n'
        probe = os.path.join(d, "probe.toml")
        with open(probe, "w") as f:
            f.write(f'[server]\n{extra}\n[[listeners]]\naddress = "127.0.0.1:0"\n\n[[routes]]\n'
                    f'path_prefix = "/"\nupstream = "x"\n\n[upstreams.x]\nservers = ["127.0.0.1:9"]\n')
        r = subprocess.run([proxy_bin, "check", "--config", probe], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        os.unlink(probe)
        _PROXY_EXTRA = extra if r.returncode == 0 else ""
    return _PROXY_EXTRA


_PROXY_MEMORY = None


def proxy_memory_keys(d, proxy_bin):
    """The memory phase's `[limits]` for this proxy (room for the crowd, no idle timeout inside
    the hold), if this build knows them; "" otherwise (its defaults then apply: say so)."""
    global _PROXY_MEMORY
    if _PROXY_MEMORY is None:
        keys = (f'\n[limits]\nmax_connections = {MEMORY_MAX_CONNECTIONS}\n'
                f'client_idle_timeout = "{MEMORY_IDLE_TIMEOUT_S}s"\n')
        probe = os.path.join(d, "probe.toml")
        with open(probe, "w") as f:
            f.write(f'{keys}\n[[listeners]]\naddress = "127.0.0.1:0"\n\n[[routes]]\n'
                    f'path_prefix = "/"\nupstream = "x"\n\n[upstreams.x]\nservers = ["127.0.0.1:9"]\n')
        r = subprocess.run([proxy_bin, "check", "--config", probe], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        os.unlink(probe)
        _PROXY_MEMORY = keys if r.returncode == 0 else ""
    return _PROXY_MEMORY
