package fleet

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestLoadCountsAnswersAndFailures(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1)%3 == 0 {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("v1\n"))
	}))
	defer srv.Close()
	l := StartLoad(srv.URL)
	for l.Result().OK+l.Result().Failed < 9 {
		time.Sleep(10 * time.Millisecond)
	}
	r := l.Stop()
	if r.Failed == 0 || r.OK != r.Answers["v1"] || r.FirstErr == nil || int(n.Load()) != r.OK+r.Failed {
		t.Fatalf("result %+v after %d requests", r, n.Load())
	}
}
