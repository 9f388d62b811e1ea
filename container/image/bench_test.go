package image

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeBenchTree fills dir with about 50 MB shaped like a root file system:
// many small text files, some mid-sized binaries with repetitive structure,
// a few incompressible blobs, and symlinks. It returns the content bytes.
func writeBenchTree(b *testing.B, dir string) int64 {
	rng := rand.New(rand.NewPCG(7, 11))
	words := strings.Fields("the quick brown fox jumps over lazy dog config value enable disable path usr lib bin etc root port host name 127.0.0.1 true false")
	text := func(n int) []byte {
		var buf bytes.Buffer
		for buf.Len() < n {
			buf.WriteString(words[rng.IntN(len(words))])
			if rng.IntN(8) == 0 {
				buf.WriteByte('\n')
			} else {
				buf.WriteByte(' ')
			}
		}
		return buf.Bytes()[:n]
	}
	binary := func(n int) []byte {
		// Code-like: random 16-byte "instructions" from a small alphabet.
		ops := make([][]byte, 256)
		for i := range ops {
			ops[i] = make([]byte, 16)
			for j := range ops[i] {
				ops[i][j] = byte(rng.Uint32())
			}
		}
		out := make([]byte, 0, n)
		for len(out) < n {
			out = append(out, ops[rng.IntN(len(ops))]...)
		}
		return out[:n]
	}
	random := func(n int) []byte {
		out := make([]byte, n)
		for i := range out {
			out[i] = byte(rng.Uint32())
		}
		return out
	}
	var total int64
	write := func(p string, data []byte) {
		p = filepath.Join(dir, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			b.Fatal(err)
		}
		total += int64(len(data))
	}
	for i := range 3000 {
		write(fmt.Sprintf("etc/conf%d/file%d.conf", i%40, i), text(500+rng.IntN(6000)))
	}
	for i := range 60 {
		write(fmt.Sprintf("usr/lib/lib%d.so", i), binary(300<<10+rng.IntN(200<<10)))
		if err := os.Symlink(fmt.Sprintf("lib%d.so", i), filepath.Join(dir, fmt.Sprintf("usr/lib/lib%d.so.1", i))); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 4 {
		write(fmt.Sprintf("usr/share/blob%d.gz", i), random(2<<20))
	}
	return total
}

// BenchmarkWriteReadArchive measures a write and an extraction of a ~50 MB
// tree; MB/s counts the tree's content bytes.
func BenchmarkWriteReadArchive(b *testing.B) {
	ctx := context.Background()
	src := b.TempDir()
	size := writeBenchTree(b, src)
	b.SetBytes(size)
	var buf bytes.Buffer
	var compressed int
	b.ResetTimer()
	for i := range b.N {
		buf.Reset()
		if err := WriteArchive(ctx, &buf, src, nil, nil); err != nil {
			b.Fatal(err)
		}
		compressed = buf.Len()
		dst := filepath.Join(b.TempDir(), fmt.Sprint(i))
		if _, err := ReadArchive(ctx, &buf, dst, Limits{}, nil); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.RemoveAll(dst)
		b.StartTimer()
	}
	b.ReportMetric(float64(compressed)/float64(size), "compressed/raw")
}
