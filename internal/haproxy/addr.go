// Package haproxy is a client for HAProxy's runtime API as stapler uses it: the stats socket
// and the master CLI, one connection in interactive mode, pipelined commands with deadlines,
// and parsers for the answers to the commands stapler sends. What differs between HAProxy
// versions is decided in one place, Caps.
package haproxy

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Addr is a runtime API address: a unix socket path ("/run/haproxy/admin.sock",
// "unix@/path") or a TCP address ("127.0.0.1:9999", "ipv4@127.0.0.1:9999", "[::1]:9999",
// "ipv6@[::1]:9999"), either behind "master:" for the master CLI of `haproxy -W -S`.
type Addr struct {
	Raw     string // as configured
	Network string // "unix" or "tcp"
	Address string
	Master  bool
}

// ParseAddr parses a runtime API address as stapler's configuration spells it.
func ParseAddr(s string) (Addr, error) {
	a := Addr{Raw: s}
	rest, master := strings.CutPrefix(s, "master:")
	a.Master = master
	switch {
	case strings.HasPrefix(rest, "unix@"):
		a.Network, a.Address = "unix", strings.TrimPrefix(rest, "unix@")
	case strings.HasPrefix(rest, "ipv4@"), strings.HasPrefix(rest, "ipv6@"):
		a.Network, a.Address = "tcp", rest[len("ipv4@"):]
	case strings.Contains(rest, "/"):
		a.Network, a.Address = "unix", rest
	default:
		a.Network, a.Address = "tcp", rest
	}
	if a.Address == "" {
		return a, fmt.Errorf("socket %q: no address", s)
	}
	if a.Network == "tcp" {
		host, port, err := net.SplitHostPort(a.Address)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 1 || n > 65535 || strings.ContainsAny(host, "@/") {
			return a, fmt.Errorf("socket %q: want a unix socket path or host:port (a port number)", s)
		}
		if host == "" || host == "*" {
			a.Address = net.JoinHostPort("127.0.0.1", port)
		}
	}
	return a, nil
}

func (a Addr) String() string { return a.Raw }
