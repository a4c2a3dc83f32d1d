#!/usr/bin/env python3
"""
tests/peers.py: dialback's encrypted tunnel beside `ssh -R` on this
machine, in one run: one stream each way, new connections per second, and
the forwarder's CPU seconds per GiB.  Everything runs on loopback: a local
sshd on a spare port with a throwaway host key and user key, the ssh client
forwarding a public port back to the same service dialback forwards to.

    python3 tests/peers.py [-seconds S] [-bytes N]

Needs ./server and ./client (make), sshd and ssh (Debian's
openssh-server, openssh-client) and root (sshd's privilege separation).
Not part of `make test`; README's Performance section quotes its output.
The load is the same for every path: a download reads N bytes a service
sends, an upload sends N bytes a service counts, a new connection sends
one byte and reads its echo.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

GIB = 1 << 30
TOKEN = "peers-bench-token-of-some-length"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, secs=10.0):
    end = time.time() + secs
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("peers: nothing listens on port %d" % port)


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def tree(pid):
    """pid and its descendants (sshd forks a process per session)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open("/proc/%d/task/%d/children" % (p, p)) as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


class Services:
    """The services every path forwards to: source (sends N bytes, closes),
    sink (counts until EOF, answers the count) and echo (one byte back)."""

    def __init__(self, nbytes):
        self.nbytes = nbytes
        self.ports = {}
        for name in ("source", "sink", "echo"):
            ls = socket.socket()
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind(("127.0.0.1", 0))
            ls.listen(512)
            self.ports[name] = ls.getsockname()[1]
            threading.Thread(target=self.serve, args=(ls, name),
                             daemon=True).start()

    def serve(self, ls, name):
        while True:
            c, _ = ls.accept()
            threading.Thread(target=getattr(self, name), args=(c,),
                             daemon=True).start()

    def source(self, c):
        chunk = b"\x5a" * (1 << 20)
        left = self.nbytes
        try:
            while left > 0:
                n = c.send(chunk[:min(left, len(chunk))])
                left -= n
            c.shutdown(socket.SHUT_WR)
            while c.recv(65536):
                pass
        except OSError:
            pass
        c.close()

    def sink(self, c):
        got = 0
        buf = bytearray(1 << 20)
        try:
            while True:
                n = c.recv_into(buf)
                if n == 0:
                    break
                got += n
            c.sendall(b"%d\n" % got)
        except OSError:
            pass
        c.close()

    def echo(self, c):
        try:
            b = c.recv(1)
            if b:
                c.sendall(b)
        except OSError:
            pass
        c.close()


def download(port, nbytes):
    s = socket.create_connection(("127.0.0.1", port))
    buf = bytearray(1 << 20)
    got, t0 = 0, time.time()
    while True:
        n = s.recv_into(buf)
        if n == 0:
            break
        got += n
    dt = time.time() - t0
    s.close()
    if got != nbytes:
        raise SystemExit("peers: download got %d of %d bytes" % (got, nbytes))
    return dt


def upload(port, nbytes):
    s = socket.create_connection(("127.0.0.1", port))
    chunk = b"\xa5" * (1 << 20)
    left, t0 = nbytes, time.time()
    while left > 0:
        left -= s.send(chunk[:min(left, len(chunk))])
    s.shutdown(socket.SHUT_WR)
    answer = s.makefile().readline().strip()
    dt = time.time() - t0
    s.close()
    if answer != str(nbytes):
        raise SystemExit("peers: upload counted %r of %d bytes" %
                         (answer, nbytes))
    return dt


def new_conns(port, secs):
    n, t0 = 0, time.time()
    while time.time() - t0 < secs:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise SystemExit("peers: no echo on port %d" % port)
        s.close()
        n += 1
    return n / (time.time() - t0)


class Path:
    """A forwarder: its public ports for source, sink and echo, and the
    processes whose CPU it costs."""

    def __init__(self, name, ports, pids):
        self.name, self.ports, self.pids = name, ports, pids


def start_dialback(svc, procs, plain=False):
    extra = ["-plaintext"] if plain else []
    ports = {}
    pids = []
    for name in ("source", "sink", "echo"):
        ctl, tun, pub = free_port(), free_port(), free_port()
        server = subprocess.Popen(
            ["./server", "-control", "127.0.0.1:%d" % ctl,
             "-tunnel", "127.0.0.1:%d" % tun, "-public", "127.0.0.1:%d" % pub,
             "-token", TOKEN, "-q"] + extra)
        procs.append(server)
        wait_port(ctl)
        client = subprocess.Popen(
            ["./client", "-remote", "127.0.0.1:%d" % ctl,
             "-local", "127.0.0.1:%d" % svc.ports[name], "-token", TOKEN,
             "-q"] + extra)
        procs.append(client)
        ports[name] = pub
        pids += [server.pid, client.pid]
    for p in ports.values():
        wait_port(p)
    time.sleep(0.5)
    return Path("dialback -plaintext" if plain else
                "dialback (default: encrypted)", ports, pids)


def start_sshd(tmp, procs):
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    ssh = shutil.which("ssh")
    if not os.path.exists(sshd) or ssh is None or os.geteuid() != 0:
        raise SystemExit("peers: needs sshd, ssh and root")
    os.makedirs("/run/sshd", exist_ok=True)
    hostkey, userkey = os.path.join(tmp, "host"), os.path.join(tmp, "user")
    for k in (hostkey, userkey):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k],
                       check=True)
    shutil.copy(userkey + ".pub", os.path.join(tmp, "authorized_keys"))
    port = free_port()
    conf = os.path.join(tmp, "sshd_config")
    with open(conf, "w") as f:
        f.write("ListenAddress 127.0.0.1:%d\nHostKey %s\n"
                "AuthorizedKeysFile %s\nPermitRootLogin prohibit-password\n"
                "StrictModes no\nUsePAM no\nPidFile %s\n"
                "AllowTcpForwarding yes\nGatewayPorts no\n"
                "Ciphers chacha20-poly1305@openssh.com,aes128-gcm@openssh.com\n"
                % (port, hostkey, os.path.join(tmp, "authorized_keys"),
                   os.path.join(tmp, "sshd.pid")))
    d = subprocess.Popen([sshd, "-D", "-e", "-f", conf],
                         stderr=subprocess.DEVNULL)
    procs.append(d)
    wait_port(port)
    return ssh, port, userkey, d


def start_ssh(ssh, port, key, cipher, svc, sshd, procs):
    ports = {n: free_port() for n in ("source", "sink", "echo")}
    args = [ssh, "-N", "-T", "-p", str(port), "-i", key,
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ExitOnForwardFailure=yes",
            "-c", cipher]
    for n, p in ports.items():
        args += ["-R", "127.0.0.1:%d:127.0.0.1:%d" % (p, svc.ports[n])]
    c = subprocess.Popen(args + ["root@127.0.0.1"])
    procs.append(c)
    for p in ports.values():
        wait_port(p)
    time.sleep(0.5)
    # sshd's processes for this session are children of the listener.
    return Path("ssh -R, %s" % cipher.split("@")[0], ports,
                [c.pid] + [p for p in tree(sshd.pid) if p != sshd.pid])


def measure(path, nbytes, secs):
    row = {}
    for what, fn, port in (("upload", upload, path.ports["sink"]),
                           ("download", download, path.ports["source"])):
        fn(port, nbytes // 8 if fn is upload else nbytes)      # warm up
        c0 = cpu_ticks(path.pids)
        dt = fn(port, nbytes)
        cpu = cpu_ticks(path.pids) - c0
        row[what] = nbytes * 8 / dt / 1e9
        row[what + " cpu"] = cpu / (nbytes / GIB)
    row["conns"] = new_conns(path.ports["echo"], secs)
    return row


def main():
    secs, nbytes = 2.0, 2 * GIB
    args = sys.argv[1:]
    while args:
        a = args.pop(0)
        if a == "-seconds" and args:
            secs = float(args.pop(0))
        elif a == "-bytes" and args:
            nbytes = int(args.pop(0))
        else:
            raise SystemExit(__doc__)
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    procs, tmp = [], tempfile.mkdtemp(prefix="dialback-peers.")
    rows = []
    try:
        svc = Services(nbytes)
        sshd = start_sshd(tmp, procs)
        paths = [Path("direct (the harness's ceiling)", svc.ports, []),
                 start_dialback(svc, procs, plain=True),
                 start_dialback(svc, procs)]
        for cipher in ("chacha20-poly1305@openssh.com",
                       "aes128-gcm@openssh.com"):
            paths.append(start_ssh(sshd[0], sshd[1], sshd[2], cipher, svc,
                                   sshd[3], procs))
        for p in paths:
            rows.append((p.name, measure(p, nbytes, secs)))
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d MiB a stream, new connections for %.0f s; CPU is the "
          "forwarder's own (server and client; ssh and sshd)" %
          (nbytes >> 20, secs))
    print("%-34s %9s %9s %11s %11s %9s" % ("path", "up Gbit/s", "down",
                                          "up s/GiB", "down s/GiB",
                                          "conn/s"))
    for name, r in rows:
        print("%-34s %9.2f %9.2f %11.2f %11.2f %9.0f" %
              (name, r["upload"], r["download"], r["upload cpu"],
               r["download cpu"], r["conns"]))


if __name__ == "__main__":
    main()
