"""How the targets are ordered, named and coloured in every table and plot."""

TARGET_ORDER = ["direct", "relay", "native", "hyper", "traefik", "nginx", "haproxy"]
LABEL = {"direct": "direct (no proxy)", "relay": "byte-relay floor", "native": "proxy (native)",
         "hyper": "proxy (hyper)", "traefik": "Traefik 3.7", "nginx": "nginx 1.22", "haproxy": "HAProxy 2.6"}
COLOR = {"direct": "#7f7f7f", "relay": "#000000", "native": "#d62728", "hyper": "#ff9896",
         "traefik": "#1f77b4", "nginx": "#2ca02c", "haproxy": "#9467bd"}
