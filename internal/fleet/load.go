package fleet

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Load is a client sending GET requests to one URL, one every 20 ms, until
// Stop: what a user of a service sees while it changes.
type Load struct {
	stop, done chan struct{}

	mu  sync.Mutex
	res LoadResult
}

// LoadResult is what a Load saw.
type LoadResult struct {
	OK, Failed int
	FirstErr   error
	// Answers counts the answers by body, spaces trimmed.
	Answers map[string]int
}

// StartLoad starts sending requests to url.
func StartLoad(url string) *Load {
	l := &Load{stop: make(chan struct{}), done: make(chan struct{}), res: LoadResult{Answers: map[string]int{}}}
	client := &http.Client{Timeout: 5 * time.Second}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			body, err := get(client, url)
			l.mu.Lock()
			if err != nil {
				l.res.Failed++
				if l.res.FirstErr == nil {
					l.res.FirstErr = err
				}
			} else {
				l.res.OK++
				l.res.Answers[body]++
			}
			l.mu.Unlock()
		}
	}()
	return l
}

func get(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return strings.TrimSpace(string(body)), err
}

// Result returns what the load saw so far.
func (l *Load) Result() LoadResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.res
	r.Answers = make(map[string]int, len(l.res.Answers))
	for k, v := range l.res.Answers {
		r.Answers[k] = v
	}
	return r
}

// Reset forgets what the load saw so far.
func (l *Load) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.res = LoadResult{Answers: map[string]int{}}
}

// Stop stops the load and returns what it saw.
func (l *Load) Stop() LoadResult {
	close(l.stop)
	<-l.done
	return l.Result()
}
