package driver

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/musterkit/muster/container/image"
)

// progressInterval is how many archive bytes Pipe streams between two
// progress reports.
const progressInterval = 4 << 20

// Pipe streams the stopped container name from src's Export into dst's
// Import, named rename there if that is not empty, and returns the
// imported container. A failure on either side cancels the other; as
// Import guarantees, dst then keeps nothing. progress, if not nil,
// receives the running total of archive bytes dst has read, about every
// 4 MiB and, once dst has imported the container, the final total; it is
// called by one goroutine at a time, never after Pipe returns, and must
// not block for long.
//
// Pipe is how a caller relays a container between two servers, and how a
// server implements Pusher or Puller with a Transferer of its own and a
// remote one.
func Pipe(ctx context.Context, src Transferer, name string, dst Transferer, rename string, progress func(bytes int64)) (*Info, error) {
	return pipe(ctx, func(ctx context.Context, w io.Writer) error { return src.Export(ctx, name, w) },
		func(ctx context.Context, r io.Reader) (*Info, error) { return dst.Import(ctx, r, rename) }, progress)
}

// PipeChanges streams a pre-copy pass of the container name, as Pipe
// does, from src's ExportChanges against base into dst's Stage of the
// staged copy target, and returns the staged copy's Index.
// On a failure dst keeps no staged copy.
func PipeChanges(ctx context.Context, src PreCopier, name string, base *image.Index, dst PreCopier, target string, progress func(bytes int64)) (*image.Index, error) {
	return pipe(ctx, func(ctx context.Context, w io.Writer) error { return src.ExportChanges(ctx, name, base, w) },
		func(ctx context.Context, r io.Reader) (*image.Index, error) { return dst.Stage(ctx, r, target) }, progress)
}

// pipe streams export into imp (see Pipe).
func pipe[T any](ctx context.Context, export func(context.Context, io.Writer) error, imp func(context.Context, io.Reader) (T, error), progress func(bytes int64)) (T, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	exported := make(chan error, 1)
	go func() {
		err := export(ctx, pw)
		pw.CloseWithError(err) // nil closes cleanly: the importer sees EOF
		if err != nil {
			cancel()
		}
		exported <- err
	}()
	counter := &countingReader{r: pr, progress: progress}
	out, err := imp(ctx, counter)
	// The importer may hand the stream to a goroutine that outlives it.
	counter.stop(err == nil)
	pr.CloseWithError(errImportEnded) // unblock the exporter
	if err != nil {
		cancel()
	}
	exportErr := <-exported
	if errors.Is(exportErr, errImportEnded) || errors.Is(exportErr, context.Canceled) && err != nil {
		exportErr = nil // a consequence of the import's end, not a cause
	}
	if err := errors.Join(exportErr, err); err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

var errImportEnded = errors.New("the import ended before the export")

// countingReader reports the bytes read through it to progress, about
// every progressInterval bytes, until stop.
type countingReader struct {
	r io.Reader

	mu              sync.Mutex
	progress        func(int64) // nil once stopped
	total, reported int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total += int64(n)
	if c.progress != nil && c.total-c.reported >= progressInterval {
		c.reported = c.total
		c.progress(c.total)
	}
	return n, err
}

// stop reports the total not reported yet if final, and prevents further
// progress calls. It returns once no progress call runs.
func (c *countingReader) stop(final bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if final && c.progress != nil && c.total != c.reported {
		c.progress(c.total)
	}
	c.progress = nil
}
