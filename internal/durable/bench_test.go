package durable

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// BenchmarkBatchReplace replaces 4,096 files of about 500 bytes (staples) with new content in
// one batch, as a full refresh does; cpu-us/file is the process's CPU time (user and system)
// per file, which the disk's waits do not blur.
func BenchmarkBatchReplace(b *testing.B) {
	for _, changed := range []bool{false, true} {
		b.Run(fmt.Sprintf("changed=%v", changed), func(b *testing.B) {
			const n = 4096
			name, content := benchStaples(b, n)
			var cpu time.Duration
			gen := 0
			for b.Loop() {
				gen++
				var batch Batch
				for i := range n {
					if changed {
						batch.AddChanged(1, name(i), content(i, gen), 0o644)
					} else {
						batch.Add(1, name(i), content(i, gen), 0o644)
					}
				}
				before := cpuTime()
				if err := batch.Commit(); err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime() - before
			}
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*n), "cpu-us/file")
		})
	}
}

// BenchmarkBatchReplaceChunks replaces 4,096 staples in batches of 1,024, as a full refresh
// writes them while it fetches, with the batches sharing Spares or not.
func BenchmarkBatchReplaceChunks(b *testing.B) {
	for _, shared := range []bool{false, true} {
		b.Run(fmt.Sprintf("spares=%v", shared), func(b *testing.B) {
			const n, chunk = 4096, 1024
			name, content := benchStaples(b, n)
			var cpu time.Duration
			gen := 0
			for b.Loop() {
				gen++
				var spares Spares
				before := cpuTime()
				for from := 0; from < n; from += chunk {
					var batch Batch
					if shared {
						batch.Spares = &spares
					}
					for i := from; i < from+chunk; i++ {
						batch.AddChanged(1, name(i), content(i, gen), 0o644)
					}
					if err := batch.Commit(); err != nil {
						b.Fatal(err)
					}
				}
				spares.Drop()
				cpu += cpuTime() - before
			}
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*n), "cpu-us/file")
		})
	}
}

// benchStaples writes n files of 500 bytes (staples) into a new directory, and returns their
// names and the content of generation gen (0 is what they hold).
func benchStaples(b *testing.B, n int) (name func(i int) string, content func(i, gen int) []byte) {
	dir := b.TempDir()
	name = func(i int) string { return filepath.Join(dir, fmt.Sprintf("c%05d.pem.ocsp", i)) }
	content = func(i, gen int) []byte {
		d := make([]byte, 500)
		copy(d, fmt.Sprint(gen, " ", i))
		return d
	}
	for i := range n {
		os.WriteFile(name(i), content(i, 0), 0o644)
	}
	return name, content
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkBatchCreate writes 4,096 new files of about 500 bytes into a new directory in one
// batch, as a first run does.
func BenchmarkBatchCreate(b *testing.B) {
	const n = 4096
	data := make([]byte, 500)
	var cpu time.Duration
	for b.Loop() {
		dir := b.TempDir()
		var batch Batch
		for i := range n {
			batch.Add(1, filepath.Join(dir, fmt.Sprintf("c%05d.pem.ocsp", i)), data, 0o644)
		}
		before := cpuTime()
		if err := batch.Commit(); err != nil {
			b.Fatal(err)
		}
		cpu += cpuTime() - before
	}
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*n), "cpu-us/file")
}
