package main

import (
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"

	"stapler/internal/haproxy"
	"stapler/internal/ocspcheck"
)

// stapleRef is what every HAProxy should serve for one certificate file, as plain values.
type stapleRef struct {
	Path       string // the certificate file
	Name       string // HAProxy's name for it: Path, or a crt-store entry's "@store/alias"
	File       string // the staple file
	Hash       string // of the staple's DER
	DER        []byte // the staple, read from File when it must be sent
	CertID     string // hex DER CertID: HAProxy's key for the staple
	Serial     string // hex
	ThisUpdate time.Time
	ProducedAt time.Time // zero when the state predates it
	Status     string    // good or revoked
	NextUpdate time.Time
	Fresh      bool     // fetched in this run: pushing it is news, not a repair
	NewCert    bool     // new or changed in this run: HAProxy may still run the previous one
	IssuerFile string   // <cert>.issuer: sent in a slot transaction when it exists
	Pending    []string // sockets to which an earlier run could not deliver it
}

// outcome is what became of one staple at one HAProxy.
type outcome int

const (
	unknown     outcome = iota // stapler could not tell what HAProxy serves (the zero value)
	inSync                     // HAProxy serves the staple on disk, or a newer response for it
	pushed                     // HAProxy serves it now
	pushFailed                 // HAProxy did not take it: try again next run
	needsReload                // only a reload makes HAProxy serve it
	notLoaded                  // HAProxy has not loaded the certificate file at all
)

func (o outcome) String() string {
	return [...]string{"unknown", "in sync", "pushed", "push failed", "needs reload", "not loaded"}[o]
}

type result struct {
	outcome outcome
	severe  bool   // needsReload that is a problem, not the expected end of a renewal
	newer   bool   // inSync because HAProxy serves a newer response than the disk's
	slot    bool   // HAProxy has an OCSP slot for the certificate the file runs
	why     string // for people
}

// socketReport is the outcome of one run's exchange with one HAProxy socket.
type socketReport struct {
	Results map[string]result // by certificate path
	Auto    map[string]bool   // certificate paths HAProxy's own ocsp-update keeps fresh
	Err     error             // the socket failed: what it serves is unknown
	Version string            // HAProxy's version, when known
}

// reconcileOptions are the settings of reconcileSockets.
type reconcileOptions struct {
	Timeout    time.Duration // for connecting and for each answer
	Now        time.Time
	Reloadable bool // reload_command will reload HAProxy when it needs to
	ReadOnly   bool // look, never push (stapler status)
}

// reconcileSockets makes the HAProxy behind each socket serve the staples in refs, and reports
// what each serves. Sockets of different HAProxy processes are handled at once, so that those
// that do not answer are waited for together, not one after another; sockets that lead to the
// same process (a unix and a TCP socket of one HAProxy) one after another, each on a connection
// opened when its turn comes, because certificate transactions on one HAProxy collide.
func reconcileSockets(ctx context.Context, sockets []string, refs []stapleRef, opt reconcileOptions) map[string]socketReport {
	reports := make(map[string]socketReport, len(sockets))
	if len(refs) == 0 {
		return reports
	}
	for i := range refs {
		refs[i].Name = cmp.Or(refs[i].Name, refs[i].Path)
		if refs[i].Hash == "" && refs[i].DER != nil {
			refs[i].Hash = hashBytes(refs[i].DER)
		}
	}
	sessions := make([]*haproxy.Session, len(sockets))
	errs := make([]error, len(sockets))
	var wg sync.WaitGroup
	for i, raw := range sockets {
		wg.Go(func() {
			addr, err := haproxy.ParseAddr(raw) // checked by validate
			if err == nil {
				sessions[i], err = haproxy.Open(ctx, addr, opt.Timeout)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	groups := map[string][]int{} // process identity: sockets
	for i := range sockets {
		if errs[i] != nil {
			reports[sockets[i]] = failSocket(sockets[i], errs[i], refs, opt)
			continue
		}
		var marks []string
		for _, p := range sessions[i].Current() {
			marks = append(marks, p.Info.Mark())
		}
		key := strings.Join(marks, ",")
		groups[key] = append(groups[key], i)
	}
	var mu sync.Mutex
	for _, group := range groups {
		mine := refs
		if len(groups) > 1 {
			mine = slices.Clone(refs) // loadStaple fills in DER: one copy per goroutine
		}
		wg.Go(func() {
			for k, i := range group {
				if k > 0 {
					// Idle while the first was served: HAProxy may have closed it (stats timeout).
					sessions[i].Close()
					addr, _ := haproxy.ParseAddr(sockets[i])
					s, err := haproxy.Open(ctx, addr, opt.Timeout)
					if err != nil {
						mu.Lock()
						reports[sockets[i]] = failSocket(sockets[i], err, mine, opt)
						mu.Unlock()
						continue
					}
					sessions[i] = s
				}
				rep := reconcileSession(sessions[i], mine, opt)
				sessions[i].Close()
				mu.Lock()
				reports[sockets[i]] = rep
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return reports
}

// autoCopy is what one HAProxy holds for a certificate its own ocsp-update keeps fresh.
type autoCopy struct {
	Socket string
	Update haproxy.OCSPUpdate
	DER    []byte              // nil when it holds nothing
	Resp   *ocspcheck.Response // DER, verified
	// Vouched is the staple the state vouches for when DER is that staple, byte for byte, and
	// the staple file holds it too: taken on the state's word, not verified again (Resp is
	// nil).
	Vouched *Staple
	Err     error // why DER is not a valid staple
}

// staple is what stapler records of a valid copy: a copy of the vouched staple, or one made
// from the verified response about the certificate that iss is about (a vouched copy needs no
// issuer, and may have none found).
func (c *autoCopy) staple(iss *issuedFor) *Staple {
	if c.Vouched != nil {
		s := *c.Vouched
		return &s
	}
	return newStaple(c.DER, c.Resp, iss.CertID, "")
}

// observeAutoUpdates asks each HAProxy which of the certificate files its own ocsp-update
// keeps fresh (2.8+: `show ssl ocsp-updates`), and what it holds for them, by path. A socket
// that fails is left out: the sync that follows reports it.
func observeAutoUpdates(ctx context.Context, sockets []string, files []certFile, timeout time.Duration) map[string][]autoCopy {
	out := map[string][]autoCopy{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, raw := range sockets {
		wg.Go(func() {
			addr, err := haproxy.ParseAddr(raw)
			if err != nil {
				return
			}
			s, err := haproxy.Open(ctx, addr, timeout)
			if err != nil {
				return
			}
			defer s.Close()
			for _, p := range s.Current() {
				var auto []certFile
				var names []string
				for _, f := range files {
					if _, ok := p.Updates[filepath.Clean(f.Name)]; ok {
						auto, names = append(auto, f), append(names, f.Name)
					}
				}
				if len(auto) == 0 || p.Err != nil {
					continue
				}
				held, err := p.Held(names, make([]string, len(names)))
				if err != nil {
					return
				}
				mu.Lock()
				for i, f := range auto {
					out[f.Path] = append(out[f.Path], autoCopy{Socket: raw, Update: p.Updates[filepath.Clean(f.Name)], DER: held[i].DER})
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// failSocket reports a socket that failed as a whole, in one line.
func failSocket(socket string, err error, refs []stapleRef, opt reconcileOptions) socketReport {
	rep := socketReport{Err: err, Results: map[string]result{}}
	for _, r := range refs {
		rep.Results[r.Path] = result{outcome: unknown, why: err.Error()}
	}
	switch {
	case opt.ReadOnly:
	case errors.Is(err, haproxy.ErrNeedsAdmin):
		slog.Error("HAProxy refuses stapler at this socket's level; checked again at the next run", "socket", socket, "certificates", len(refs), "err", err)
	default:
		slog.Error("HAProxy unreachable; checked again at the next run", "socket", socket, "certificates", len(refs), "err", err)
	}
	return rep
}

// reconcileSession deals with every process behind one socket: the one behind a stats socket, or
// each worker behind a master CLI. Old workers (stopping after a reload) get the staples too,
// but only the current ones decide the outcome.
func reconcileSession(s *haproxy.Session, refs []stapleRef, opt reconcileOptions) socketReport {
	rep := socketReport{Results: map[string]result{}, Auto: map[string]bool{}}
	for _, p := range s.Procs {
		if !p.Old || rep.Version == "" {
			rep.Version = p.Info.Version.Text
		}
		for _, r := range refs {
			if _, ok := p.Updates[filepath.Clean(r.Name)]; ok && !p.Old {
				rep.Auto[r.Path] = true
			}
		}
		results, err := reconcileProcess(p, refs, opt)
		switch {
		case p.Old:
			if err != nil {
				slog.Debug("old HAProxy worker did not take the staples", "socket", p.Where(), "err", err)
			}
			continue
		case err != nil:
			return failSocket(p.Where(), err, refs, opt)
		}
		for path, res := range results {
			if prev, ok := rep.Results[path]; !ok || worse(res, prev) {
				rep.Results[path] = res
			}
		}
	}
	return rep
}

// worse orders the outcomes of several workers for one certificate: the worst one counts.
func worse(a, b result) bool {
	rank := map[outcome]int{inSync: 0, pushed: 1, notLoaded: 2, needsReload: 3, pushFailed: 4, unknown: 5}
	return rank[a.outcome] > rank[b.outcome]
}

// heldVerdict is what one process's copy of a staple calls for.
type heldVerdict int

const (
	vInSync    heldVerdict = iota // it holds the staple on disk
	vNewer                        // it holds a newer response: never overwritten with an older one
	vPush                         // its slot holds nothing, or an older response
	vCreate                       // the certificate the file runs has no slot: create one
	vOtherCert                    // the file runs another certificate: a reload is needed
	vNotLoaded                    // it has not loaded the file
	vUnknown                      // stapler could not tell
)

// judge decides what the response a process holds for a certificate file calls for, given
// the staple on disk: by its exact bytes where HAProxy shows them, else by its times and status.
func judge(h haproxy.Held, r stapleRef) heldVerdict {
	switch {
	case h.Err != nil:
		return vUnknown
	case h.Name == "":
		return vNotLoaded
	case h.Key != "" && h.Key != r.CertID:
		return vOtherCert // 2.6: attached to another certificate's slot
	case !h.Slot && h.Serial != "" && !haproxy.SameSerial(h.Serial, r.Serial):
		return vOtherCert
	case !h.Slot:
		return vCreate
	case h.DER == nil && !h.TextOK:
		return vPush // an empty slot
	case h.DER != nil && hashBytes(h.DER) == r.Hash:
		return vInSync
	}
	this, produced, next := h.Text.ThisUpdate, h.Text.ProducedAt, h.Text.NextUpdate
	if h.DER != nil {
		id, err := ocspcheck.ResponseCertID(h.DER)
		if err != nil || hex.EncodeToString(id) != r.CertID {
			return vOtherCert // the slot of the certificate the file runs is another's
		}
		t, err := ocspcheck.ResponseTimes(h.DER)
		if err != nil {
			return vPush
		}
		this, produced, next = t.ThisUpdate, t.ProducedAt, t.NextUpdate
	}
	switch c := compareResponses(this, produced, r.ThisUpdate, r.ProducedAt); {
	case c > 0 && h.DER != nil:
		// Kept only if it is a whole response: x/crypto/ocsp parses all of it (and checks the
		// signature of a signer it carries). Reading the times alone costs no signature
		// check, and an older response, the usual case, is replaced anyway.
		if _, err := ocsp.ParseResponse(h.DER, nil); err != nil {
			return vPush
		}
		return vNewer
	case c > 0:
		return vNewer
	case c == 0 && h.DER == nil && next.Truncate(time.Second).Equal(r.NextUpdate.Truncate(time.Second)) && h.Text.Status == r.Status:
		// Shown as text (2.6; 3.x for a large response), times to the second: one with the same
		// times and status is the same answer, if not the same bytes (signed again in the same
		// second).
		return vInSync
	}
	return vPush
}

// reconcileProcess reads what one process holds for each staple, and (unless read-only) sends
// what it lacks: one batch of `set ssl ocsp-response`, a slot transaction for a certificate
// without a slot, then a second read of every staple sent, which must now be the disk's. An
// error means the exchange failed: what the process holds is unknown.
func reconcileProcess(p *haproxy.Process, refs []stapleRef, opt reconcileOptions) (map[string]result, error) {
	if p.Err != nil {
		return nil, p.Err
	}
	if p.Caps.WarnsBelowAdmin && p.Level != "admin" && !opt.ReadOnly {
		slog.Warn("HAProxy logs a deprecation warning for each OCSP command below level admin, and 3.4 refuses them: give stapler a socket with level admin", "socket", p.Where(), "version", p.Info.Version.Text, "socket_level", p.Level)
	}
	names, ids := make([]string, len(refs)), make([]string, len(refs))
	for i, r := range refs {
		names[i], ids[i] = r.Name, r.CertID
	}
	// A staple fetched in this run is news to every HAProxy: it is read from disk while
	// HAProxy says what it holds (which takes HAProxy's time, not stapler's). One that cannot
	// be read is read again, and reported, if it is to be sent.
	var reading sync.WaitGroup
	if !opt.ReadOnly {
		var fresh []int
		for i, r := range refs {
			if r.Fresh && r.DER == nil {
				fresh = append(fresh, i)
			}
		}
		reading.Go(func() { parallel(len(fresh), observeJobs, func(k int) { readStaple(&refs[fresh[k]]) }) })
	}
	held, err := p.Held(names, ids)
	reading.Wait()
	if err != nil {
		return nil, err
	}
	results := make(map[string]result, len(refs))
	var push, create []int
	for i, r := range refs {
		v := judge(held[i], r)
		res := result{outcome: inSync, slot: held[i].Slot}
		switch v {
		case vNewer:
			res.newer = true
			slog.Debug("HAProxy serves a newer response than the staple on disk", "cert", r.Path, "socket", p.Where())
		case vPush:
			push = append(push, i)
			res.outcome = pushFailed
		case vCreate:
			create = append(create, i)
			res.outcome = pushFailed
		case vOtherCert:
			res = result{outcome: needsReload, severe: !r.NewCert, slot: held[i].Slot,
				why: "HAProxy runs an older certificate from this file; it serves this one, with its staple, after a reload"}
			if held[i].Serial != "" {
				res.why = fmt.Sprintf("HAProxy runs an older certificate from this file (serial %s); it serves this one, with its staple, after a reload", held[i].Serial)
			}
		case vNotLoaded:
			res = result{outcome: notLoaded, why: "HAProxy has not loaded this file; it staples it from disk when it does"}
		case vUnknown:
			res = result{outcome: unknown, why: held[i].Err.Error()}
		}
		results[r.Path] = res
	}
	if opt.ReadOnly {
		return results, nil
	}
	// HAProxy never staples a response with less than 300 s left (3.2+ refuse it, 2.6 and
	// 3.0 take it silently): such a staple is not sent.
	tooLate := func(i int) bool {
		r := refs[i]
		if !r.NextUpdate.Before(opt.Now.Add(haproxyMargin)) {
			return false
		}
		results[r.Path] = result{outcome: pushFailed, why: fmt.Sprintf("the staple expires at %s, too soon for HAProxy to staple it (it stops %v before)", r.NextUpdate.Format(time.RFC3339), haproxyMargin)}
		return true
	}
	push, create = slices.DeleteFunc(push, tooLate), slices.DeleteFunc(create, tooLate)
	sent, err := pushBatch(p, refs, push, results, &create)
	if err != nil {
		return nil, err
	}
	created, err := createSlots(p, refs, create, held, results)
	if err != nil {
		return nil, err
	}
	if err := verifySent(p, refs, append(sent, created...), results); err != nil {
		return nil, err
	}
	if len(sent)+len(created) > 0 {
		if err := p.Recheck(); err != nil {
			return nil, err
		}
	}
	logResults(p, refs, results, opt)
	return results, nil
}

// pushBatch sends the staples of refs at idx in one batch. Those HAProxy has no slot for go
// to create; it returns those it took.
func pushBatch(p *haproxy.Process, refs []stapleRef, idx []int, results map[string]result, create *[]int) ([]int, error) {
	errs := make([]error, len(idx))
	parallel(len(idx), observeJobs, func(k int) { errs[k] = readStaple(&refs[idx[k]]) }) // 0.1 s at 10,000 one by one
	for k, i := range idx {
		if errs[k] != nil {
			results[refs[i].Path] = result{outcome: pushFailed, why: "reading the staple: " + errs[k].Error()}
		}
	}
	idx = slices.DeleteFunc(idx, func(i int) bool { return refs[i].DER == nil })
	ders := make([][]byte, len(idx))
	for k, i := range idx {
		ders[k] = refs[i].DER
	}
	answers, err := p.SetOCSP(ders)
	if err != nil {
		return nil, err
	}
	var sent []int
	for k, i := range idx {
		r, a := refs[i], answers[k]
		switch {
		case a.Text == haproxy.ReplyUpdated:
			sent = append(sent, i)
		case a.Text == haproxy.ReplyNoSlot:
			*create = append(*create, i)
		case errors.Is(a.Err, haproxy.ErrBadCommand):
			results[r.Path] = result{outcome: needsReload, severe: true, why: a.Err.Error()}
		case haproxy.IsDenied(a.Text):
			results[r.Path] = result{outcome: pushFailed, why: fmt.Sprintf("HAProxy refused `set ssl ocsp-response` (%s): %v", a.Text, haproxy.ErrNeedsAdmin)}
		default:
			results[r.Path] = result{outcome: pushFailed, why: fmt.Sprintf("HAProxy answered %q", a.Text)}
		}
	}
	return sent, nil
}

// createSlots creates an OCSP slot, in a transaction, for each certificate at idx that HAProxy
// runs without one (loaded without a .ocsp file, or since a hot `set ssl cert`). It returns
// those it created.
func createSlots(p *haproxy.Process, refs []stapleRef, idx []int, held []haproxy.Held, results map[string]result) ([]int, error) {
	var created []int
	for _, i := range idx {
		r, h := refs[i], held[i]
		if h.Serial == "" {
			// An empty slot (3.x) or a push answered "no slot" does not say which certificate
			// the file runs: a transaction must not give this staple to another.
			ci, ok, err := p.CertInfo(h.Name)
			if err != nil {
				return nil, err
			}
			if ok {
				h.Serial = ci.Serial
			}
		}
		if h.Serial != "" && !haproxy.SameSerial(h.Serial, r.Serial) {
			results[r.Path] = result{outcome: needsReload, severe: !r.NewCert,
				why: fmt.Sprintf("HAProxy runs an older certificate from this file (serial %s); it serves this one, with its staple, after a reload", h.Serial)}
			continue
		}
		if !loadStaple(&refs[i], results) {
			continue
		}
		r = refs[i]
		issuer, err := issuerPayload(r.IssuerFile)
		if err == nil {
			err = p.CreateSlot(h.Name, r.DER, issuer)
		}
		switch {
		case err == nil:
			created = append(created, i)
			results[r.Path] = result{outcome: pushed, slot: true, why: "created OCSP slot without a reload"}
		case errors.Is(err, haproxy.ErrUnreachable):
			return nil, err
		case errors.Is(err, haproxy.ErrBadCommand):
			// Too large for the runtime API: only a reload, from disk, serves it.
			results[r.Path] = result{outcome: needsReload, severe: true, why: err.Error()}
		case errors.Is(err, haproxy.ErrNeedsAdmin), errors.Is(err, haproxy.ErrTransactionOpen):
			results[r.Path] = result{outcome: needsReload, severe: !r.NewCert, why: "HAProxy has no OCSP slot for this certificate, and " + err.Error()}
		default:
			results[r.Path] = result{outcome: pushFailed, why: "creating an OCSP slot: " + err.Error()}
		}
	}
	return created, nil
}

// loadStaple reads the staple to send, if it was not read yet, from its file: it must still
// be the staple the state vouches for.
func loadStaple(r *stapleRef, results map[string]result) bool {
	if err := readStaple(r); err != nil {
		results[r.Path] = result{outcome: pushFailed, why: "reading the staple: " + err.Error()}
		return false
	}
	return true
}

// readStaple is loadStaple, for one staple only: it says why it could not.
func readStaple(r *stapleRef) error {
	if r.DER != nil {
		return nil
	}
	der, err := readRegular(r.File, maxStapleBytes)
	if err == nil && hashBytes(der) != r.Hash {
		err = fmt.Errorf("%s changed during the run", r.File)
	}
	if err != nil {
		return err
	}
	r.DER = der
	return nil
}

// issuerPayload is the issuer file's certificates, re-encoded one PEM block each with no blank
// line (HAProxy ends a payload at an empty line), nil when there is no such file.
func issuerPayload(path string) ([]byte, error) {
	data, err := readRegular(path, maxStapleBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	certs, err := parseBundle(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []byte
	for _, c := range certs {
		out = append(out, issuerPEM(c)...)
	}
	return out, nil
}

// verifySent reads again, by file, what HAProxy holds for each staple sent: HAProxy answers
// "updated" for a slot that no certificate uses any more (an orphan of a hot update kept alive
// by an old connection), so only this read proves a push.
func verifySent(p *haproxy.Process, refs []stapleRef, idx []int, results map[string]result) error {
	if len(idx) == 0 {
		return nil
	}
	names, ids := make([]string, len(idx)), make([]string, len(idx))
	for k, i := range idx {
		names[k], ids[k] = refs[i].Name, refs[i].CertID
	}
	held, err := p.Held(names, ids)
	if err != nil {
		return err
	}
	for k, i := range idx {
		r := refs[i]
		switch v := judge(held[k], r); v {
		case vInSync, vNewer:
			res := results[r.Path]
			res.outcome, res.slot = pushed, true
			results[r.Path] = res
		default:
			results[r.Path] = result{outcome: pushFailed, slot: held[k].Slot, why: "HAProxy accepted the staple but does not serve it for this file"}
		}
	}
	return nil
}

// logResults says what became of the staples at one process: a line per change or problem,
// and one line for what many certificates share (a socket below level admin).
func logResults(p *haproxy.Process, refs []stapleRef, results map[string]result, opt reconcileOptions) {
	if p.Old {
		// A worker stopping after a reload: what it holds decides nothing.
		for _, r := range refs {
			if res := results[r.Path]; res.outcome != inSync {
				slog.Debug("old HAProxy worker", "cert", r.Path, "socket", p.Where(), "outcome", res.outcome, "why", res.why)
			}
		}
		return
	}
	var admin []string
	for _, r := range refs {
		res := results[r.Path]
		switch {
		case res.outcome == pushed && res.why != "":
			slog.Info(res.why, "cert", r.Path, "socket", p.Where())
		case res.outcome == pushed && r.Fresh:
			slog.Debug("pushed staple", "cert", r.Path, "socket", p.Where())
		case res.outcome == pushed && slices.Contains(r.Pending, p.Socket()):
			slog.Info("delivered the staple an earlier run could not push", "cert", r.Path, "socket", p.Where())
		case res.outcome == pushed:
			slog.Info("HAProxy did not serve the staple on disk; sent it", "cert", r.Path, "socket", p.Where())
		case res.outcome == needsReload && strings.Contains(res.why, haproxy.ErrNeedsAdmin.Error()) && res.severe:
			admin = append(admin, r.Path)
			slog.Debug("needs reload", "cert", r.Path, "socket", p.Where(), "why", res.why)
		case res.outcome == needsReload && !res.severe:
			slog.Warn("HAProxy will load this staple when it reloads", "cert", r.Path, "socket", p.Where(), "why", res.why)
		case res.outcome == needsReload && opt.Reloadable:
			slog.Info("needs reload", "cert", r.Path, "socket", p.Where(), "why", res.why)
		case res.outcome == needsReload:
			slog.Error("needs reload", "cert", r.Path, "socket", p.Where(), "why", res.why)
		case res.outcome == pushFailed:
			slog.Error("push failed", "cert", r.Path, "socket", p.Where(), "err", res.why)
		case res.outcome == notLoaded && r.NewCert:
			slog.Warn("HAProxy has not loaded this certificate; it staples it from disk when it loads it", "cert", r.Path, "socket", p.Where())
		}
	}
	if len(admin) > 0 {
		log := slog.Error
		if opt.Reloadable {
			log = slog.Info
		}
		log("needs reload: HAProxy has no OCSP slot for these certificates, and creating one without a reload needs a socket with level admin (stats socket ... level admin)",
			"socket", p.Where(), "socket_level", p.Level, "certificates", len(admin), "first", admin[0])
	}
}
