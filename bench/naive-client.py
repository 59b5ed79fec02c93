#!/usr/bin/env python3
"""How much a client that writes before it reads can send: sizes of 1 to 24 MiB, each written
whole (sendall, 3 s limit) before one byte is read, until one gets stuck.

usage: python3 bench/naive-client.py BINARY [SERVER ARGS...]
e.g.   python3 bench/naive-client.py target/release/epoll-echo --max-pending 16M
"""
import socket, sys, subprocess, time, threading, re
binary, extra = sys.argv[1], sys.argv[2:]
p = subprocess.Popen([binary,"--port","0","--host","127.0.0.1","--maxListeners","1"]+extra, stderr=subprocess.PIPE, text=True)
port=None
for line in p.stderr:
    m=re.search(r"listening on \S+:(\d+)", line)
    if m: port=int(m.group(1)); break
def ok(n):
    s=socket.create_connection(("127.0.0.1",port))
    s.settimeout(3)
    try:
        s.sendall(b"x"*n)
    except socket.timeout:
        s.close(); return False
    s.settimeout(10); got=0
    while got<n: got+=len(s.recv(1<<20))
    s.close(); return True
res=[]
for mib in [1,2,3,4,6,8,12,16,24]:
    r=ok(mib<<20); res.append((mib,r))
    if not r: break
print(binary.split("/")[-1], extra, " ".join(f"{m}MiB:{'ok' if r else 'STUCK'}" for m,r in res))
p.kill()
