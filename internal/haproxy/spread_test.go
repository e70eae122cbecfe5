package haproxy_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"stapler/internal/haproxy"
	"stapler/internal/haproxy/haproxytest"
)

// TestSpread: a large batch is spread over one connection per HAProxy thread, and only over
// connections that reach the same process: one that reaches another (a reload in between)
// gets nothing but `show info`.
func TestSpread(t *testing.T) {
	const n = 600
	tests := []struct {
		name              string
		threads, newFrom  int
		conns, secondGets int // connections, and commands on the second
	}{
		{name: "two threads", threads: 2, conns: 2, secondGets: n / 2},
		{name: "eight threads: four connections", threads: 8, conns: 4, secondGets: n / 4},
		{name: "a new process from the second connection", threads: 2, newFrom: 2, conns: 2, secondGets: 1},
		{name: "one thread", threads: 1, conns: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := haproxytest.Start(t, "3.4.7-1", "admin")
			f.SetThreads(tt.threads)
			f.NewProcessFrom(tt.newFrom)
			names, ids := make([]string, n), make([]string, n)
			for i := range n {
				names[i], ids[i] = fmt.Sprintf("/c/site%03d.pem", i), fmt.Sprintf("30%04x", i)
				f.Load(names[i], fmt.Sprintf("%x", 1000+i), ids[i], i%2 == 0)
			}
			addr, err := haproxy.ParseAddr(f.Addr)
			if err != nil {
				t.Fatal(err)
			}
			s, err := haproxy.Open(context.Background(), addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			held, err := s.Procs[0].Held(names, ids)
			s.Close()
			if err != nil {
				t.Fatal(err)
			}
			for i, h := range held {
				if h.Name != names[i] || h.Slot != (i%2 == 0) || h.Err != nil {
					t.Fatalf("%s: held %+v, want its name and a slot: %v", names[i], h, i%2 == 0)
				}
			}
			if got := f.Conns(); got != tt.conns {
				t.Errorf("%d connections, want %d", got, tt.conns)
			}
			// The batch: one `show ssl ocsp-response base64` per file, spread; then, on the
			// first connection, two commands for each file without a response (heldMore).
			if got := f.Commands(2); got < tt.secondGets || got > tt.secondGets+1 {
				t.Errorf("the second connection sent %d commands, want %d (and its show info)", got, tt.secondGets)
			}
		})
	}
}

// TestLockedStop: a run that stops while HAProxy keeps its certificates locked stops waiting
// for the lock at once, and says so (before, the next retry found the connection closed by
// the stop, and said only that).
func TestLockedStop(t *testing.T) {
	f := haproxytest.Start(t, "3.4.7-1", "admin")
	f.Load("/c/site.pem", "1f", "3001", true)
	addr, err := haproxy.ParseAddr(f.Addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := haproxy.Open(ctx, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f.Lock(-1) // every certificate command refused as locked, for good
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = s.Procs[0].Held([]string{"/c/site.pem"}, []string{"3001"})
	if !errors.Is(err, context.Canceled) || !errors.Is(err, haproxy.ErrUnreachable) {
		t.Fatalf("Held while locked, the run stopping: %v; want ErrUnreachable for the stop", err)
	}
}
