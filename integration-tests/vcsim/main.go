// certfleet-vcsim: govmomi's vCenter simulator (VMware's own, github.com/vmware/govmomi
// simulator/, Debian package golang-github-vmware-govmomi-dev 0.24.2) with what certfleet's
// ESXi work needs and vcsim 0.24 lacks, added here following the vim25 WSDL types that
// govmomi generates (vim25/types, vim25/methods):
//
//   - HostSystem.config.certificate: vcsim has a 2-byte placeholder; here every host gets a
//     PEM certificate signed by a simulated VMCA root.
//   - CertificateManager (vcsim 0.24 only names it in ServiceContent):
//     CertMgrRefreshCertificates_Task and CertMgrRefreshCACertificatesAndCRLs_Task.
//   - HostSystem DisconnectHost_Task / ReconnectHost_Task (missing in vcsim 0.24).
//   - OptionManager settings vpxd.certmgmt.mode and vpxd.certmgmt.certs.daysValid (and, when
//     the spec asks, vpxd.certmgmt.certs.autoRenewThreshold).
//   - Per host (spec): runtime.dasHostState.state (vSphere HA agent state) and
//     config.vsanHostConfig.enabled; vcsim leaves both unset.
//   - Per vSAN host: configManager.vsanInternalSystem with QuerySyncingVsanObjects (objects
//     resyncing, spec vsan_syncing); see vsanInternalSystem for what is unverified.
//   - ReconnectHost_Task's HostConnectSpec.sslThumbprint check for a host serving an expired
//     certificate (SSLVerifyFault otherwise).
//   - Per host (spec custom): a certificate issued by another CA ("Corp Issuing CA"), as an
//     operator installs by hand on a host of a vCenter in vmca mode.
//   - A TLS listener per host standing in for the host's own port 443.
//   - For fault-injection tests: a count of CertMgrRefreshCertificates_Task calls per host, and
//     an optional delay before a refresh task does its work (the task is returned "running"
//     at once and completes later, as a real vCenter's task does while the host renews).
//
// UNVERIFIED against a real vCenter (the vim25 types are real, these behaviours are not):
// the faults a refresh raises for a disconnected host (HostNotConnected), a host in
// maintenance mode (InvalidState) and in custom mode (NotSupported); that a refresh caps
// the new certificate at the root's not-after; that the host endpoint switches to the new
// certificate at once (a "stale" host keeps serving the old one, to test detection).
//
// Usage: certfleet-vcsim SPEC.json OUT_DIR. Writes OUT_DIR/vcsim.json (URL, hosts, ports,
// control URL) and OUT_DIR/vmca-root.pem, then serves until killed. A control endpoint
// (GET /ctl/state, /ctl/rotate-root, /ctl/mode?set=MODE, /ctl/refresh-delay?ms=N) lets
// tests look and act
// from outside vCenter's API.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/ioutil"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/vpx"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

type hostSpec struct {
	Maintenance  bool   `json:"maintenance"`
	Disconnected bool   `json:"disconnected"`
	Expired      bool   `json:"expired"`
	Stale        bool   `json:"stale_endpoint"`
	HA           string `json:"ha_state"`
	Vsan         bool   `json:"vsan"`
	// vSAN DOM objects this host reports resyncing (HostVsanInternalSystem, see below).
	VsanSyncing int `json:"vsan_syncing"`
	// A certificate from another CA ("Corp Issuing CA"), installed by hand on a host of a
	// vCenter in vmca mode.
	Custom bool `json:"custom"`
}

type spec struct {
	Clusters        int    `json:"clusters"`
	HostsPerCluster int    `json:"hosts_per_cluster"`
	Mode            string `json:"mode"`
	DaysValid       int    `json:"days_valid"`
	HostDaysLeft    int    `json:"host_days_left"`
	// vCenter 8.0 U3h+ / 9.x auto-renew: when set, the advanced setting
	// vpxd.certmgmt.certs.autoRenewThreshold (days) exists with this value. Name from VMware's
	// "What's new with vSphere 9.1" blog; UNVERIFIED for 8.0 U3h, and vcsim does not renew by
	// itself (tests replace certificates through the API to stand in for the renewal).
	AutoRenewThreshold int                 `json:"auto_renew_threshold"`
	User               string              `json:"user"`
	Password           string              `json:"password"`
	Hosts              map[string]hostSpec `json:"hosts"`
}

type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

type hostState struct {
	name        string
	ref         types.ManagedObjectReference
	cluster     string
	host        *simulator.HostSystem
	serving     tls.Certificate
	stale       bool
	trustedRoot string
	port        int
	// CertMgrRefreshCertificates_Task calls naming this host (test bookkeeping).
	refreshes int
}

var (
	mu      sync.Mutex
	root    *issuer
	corp    *issuer
	hosts   = map[string]*hostState{}
	theSpec spec
	modeOpt *types.OptionValue
	// Set by /ctl/refresh-delay: how long a refresh task stays running before it renews.
	refreshDelay time.Duration
)

func fp(der []byte) string { s := sha256.Sum256(der); return hex.EncodeToString(s[:]) }

func newKey() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	return k
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	return n
}

func newRoot(cn string, years int) *issuer {
	k := newKey()
	t := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: cn, Organization: []string{"VMware"}},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(years, 0, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, t, t, &k.PublicKey, k)
	if err != nil {
		log.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &issuer{c, k, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// leaf issues a certificate for name valid from notBefore to notAfter, capped at the root's
// not-after as VMCA does.
func leaf(name string, notBefore, notAfter time.Time) tls.Certificate {
	return leafBy(root, name, notBefore, notAfter)
}

// leafBy issues the certificate with iss.
func leafBy(iss *issuer, name string, notBefore, notAfter time.Time) tls.Certificate {
	if notAfter.After(iss.cert.NotAfter) {
		notAfter = iss.cert.NotAfter
	}
	k := newKey()
	t := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: name, Organization: []string{"VMware"}},
		NotBefore: notBefore, NotAfter: notAfter, DNSNames: []string{name},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(name); ip != nil {
		t.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, t, iss.cert, &k.PublicKey, iss.key)
	if err != nil {
		log.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

func pemOf(c tls.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})
}

// esxHost adds the connection methods vcsim 0.24 lacks. It embeds vcsim's HostSystem by value
// (vcsim's property collector and views dig the first embedded struct down to the mo type);
// Get hands the property collector the wrapped vcsim object.
type esxHost struct {
	simulator.HostSystem
}

func (h *esxHost) Get() mo.Reference { return &h.HostSystem }

func (h *esxHost) DisconnectHostTask(req *types.DisconnectHost_Task) soap.HasFault {
	task := simulator.CreateTask(&h.HostSystem, "disconnectHost", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		mu.Lock()
		defer mu.Unlock()
		h.Runtime.ConnectionState = types.HostSystemConnectionStateDisconnected
		return nil, nil
	})
	return &methods.DisconnectHost_TaskBody{Res: &types.DisconnectHost_TaskResponse{Returnval: task.Run()}}
}

// ReconnectHostTask reconnects and, as a reconnect does, re-reads the certificate the host
// serves. A host serving an expired certificate is accepted only with
// HostConnectSpec.sslThumbprint equal to the SHA-1 thumbprint of what it serves, else the task
// fails with SSLVerifyFault carrying the thumbprint (as vCenter asks a client to confirm an
// unknown host certificate). UNVERIFIED: the exact fault a real vCenter raises here.
func (h *esxHost) ReconnectHostTask(req *types.ReconnectHost_Task) soap.HasFault {
	task := simulator.CreateTask(&h.HostSystem, "reconnectHost", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range hosts {
			if s.ref != h.Self {
				continue
			}
			leafCert, _ := x509.ParseCertificate(s.serving.Certificate[0])
			thumb := sha1Thumbprint(s.serving.Certificate[0])
			given := ""
			if req.CnxSpec != nil {
				given = req.CnxSpec.SslThumbprint
			}
			if (given != "" && given != thumb) || (given == "" && time.Now().After(leafCert.NotAfter)) {
				return nil, &types.SSLVerifyFault{Thumbprint: thumb}
			}
			h.Config.Certificate = pemOf(s.serving)
		}
		h.Runtime.ConnectionState = types.HostSystemConnectionStateConnected
		return nil, nil
	})
	return &methods.ReconnectHost_TaskBody{Res: &types.ReconnectHost_TaskResponse{Returnval: task.Run()}}
}

func sha1Thumbprint(der []byte) string {
	sum := sha1.Sum(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// vsanInternalSystem is a vSAN host's HostVsanInternalSystem (configManager.vsanInternalSystem),
// which vcsim 0.24 does not model; only QuerySyncingVsanObjects. Source: the vim25 WSDL as
// govmomi vendors it (vim25/types: QuerySyncingVsanObjectsRequestType{uuids},
// QuerySyncingVsanObjectsResponse{returnval string}; the API reference: "uuids: List of
// VSAN/DOM object UUIDs to restrict search to", none = all). The returned string is JSON.
// UNVERIFIED: its layout — modelled as RVC's vsan.resync_dashboard reads it, an object
// {"dom_objects": {uuid: {...}}, "lsom_objects": {...}} with one dom_objects entry per object
// resyncing; and that vCenter forwards the call to the host as it does other host methods.
type vsanInternalSystem struct {
	Self    types.ManagedObjectReference
	host    string
	syncing int
}

func (v *vsanInternalSystem) Reference() types.ManagedObjectReference { return v.Self }

func (v *vsanInternalSystem) QuerySyncingVsanObjects(req *types.QuerySyncingVsanObjects) soap.HasFault {
	mu.Lock()
	n := v.syncing
	mu.Unlock()
	dom := map[string]interface{}{}
	for i := 0; i < n; i++ {
		uuid := fmt.Sprintf("5f%06x-%04x-0000-0000-00505601%04x", i+1, len(v.host), i)
		dom[uuid] = map[string]interface{}{
			"uuid": uuid, "owner": v.host,
			"content": map[string]interface{}{"type": "Configuration", "attributes": map[string]interface{}{"bytesToSync": 1 << 30}},
		}
	}
	b, _ := json.Marshal(map[string]interface{}{"dom_objects": dom, "lsom_objects": map[string]interface{}{}})
	return &methods.QuerySyncingVsanObjectsBody{Res: &types.QuerySyncingVsanObjectsResponse{Returnval: string(b)}}
}

type certificateManager struct {
	mo.CertificateManager
}

func (m *certificateManager) find(ref types.ManagedObjectReference) *hostState {
	for _, s := range hosts {
		if s.ref == ref {
			return s
		}
	}
	return nil
}

func (m *certificateManager) check(refs []types.ManagedObjectReference) ([]*hostState, types.BaseMethodFault) {
	var out []*hostState
	for _, r := range refs {
		s := m.find(r)
		if s == nil {
			return nil, &types.ManagedObjectNotFound{Obj: r}
		}
		if theSpec.Mode == "custom" {
			return nil, &types.NotSupported{}
		}
		if s.host.Runtime.ConnectionState != types.HostSystemConnectionStateConnected {
			return nil, &types.HostNotConnected{}
		}
		if s.host.Runtime.InMaintenanceMode {
			return nil, &types.InvalidState{}
		}
		out = append(out, s)
	}
	return out, nil
}

func (m *certificateManager) CertMgrRefreshCertificatesTask(req *types.CertMgrRefreshCertificates_Task) soap.HasFault {
	task := simulator.CreateTask(m, "certMgrRefreshCertificates", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		mu.Lock()
		defer mu.Unlock()
		targets, fault := m.check(req.Host)
		if fault != nil {
			return nil, fault
		}
		for _, s := range targets {
			c := leaf(s.name, time.Now().Add(-time.Minute), time.Now().AddDate(0, 0, theSpec.DaysValid))
			s.host.Config.Certificate = pemOf(c)
			if !s.stale {
				s.serving = c
			}
		}
		return nil, nil
	})
	mu.Lock()
	for _, ref := range req.Host {
		for _, s := range hosts {
			if s.ref == ref {
				s.refreshes++
			}
		}
	}
	delay := refreshDelay
	mu.Unlock()
	if delay > 0 {
		// Returned while running; the work happens after the delay (UNVERIFIED: how long a
		// real host's renewal keeps the task running).
		simulator.Map.Update(task, []types.PropertyChange{
			{Name: "info.startTime", Val: time.Now()},
			{Name: "info.state", Val: types.TaskInfoStateRunning},
		})
		go func() {
			time.Sleep(delay)
			simulator.Map.WithLock(task, func() { task.Run() })
		}()
		return &methods.CertMgrRefreshCertificates_TaskBody{Res: &types.CertMgrRefreshCertificates_TaskResponse{Returnval: task.Self}}
	}
	return &methods.CertMgrRefreshCertificates_TaskBody{Res: &types.CertMgrRefreshCertificates_TaskResponse{Returnval: task.Run()}}
}

func (m *certificateManager) CertMgrRefreshCACertificatesAndCRLsTask(req *types.CertMgrRefreshCACertificatesAndCRLs_Task) soap.HasFault {
	task := simulator.CreateTask(m, "certMgrRefreshCACertificatesAndCRLs", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		mu.Lock()
		defer mu.Unlock()
		targets, fault := m.check(req.Host)
		if fault != nil {
			return nil, fault
		}
		for _, s := range targets {
			s.trustedRoot = fp(root.cert.Raw)
		}
		return nil, nil
	})
	return &methods.CertMgrRefreshCACertificatesAndCRLs_TaskBody{Res: &types.CertMgrRefreshCACertificatesAndCRLs_TaskResponse{Returnval: task.Run()}}
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: certfleet-vcsim SPEC.json OUT_DIR")
	}
	raw, err := ioutil.ReadFile(os.Args[1])
	must(err)
	must(json.Unmarshal(raw, &theSpec))
	if theSpec.DaysValid == 0 {
		theSpec.DaysValid = 1825
	}
	if theSpec.Mode == "" {
		theSpec.Mode = "vmca"
	}
	out := os.Args[2]
	root = newRoot("CA", 10)

	modeOpt = &types.OptionValue{Key: "vpxd.certmgmt.mode", Value: theSpec.Mode}
	vpx.Setting = append(vpx.Setting,
		modeOpt,
		&types.OptionValue{Key: "vpxd.certmgmt.certs.daysValid", Value: fmt.Sprint(theSpec.DaysValid)},
	)
	if theSpec.AutoRenewThreshold > 0 {
		vpx.Setting = append(vpx.Setting,
			&types.OptionValue{Key: "vpxd.certmgmt.certs.autoRenewThreshold", Value: fmt.Sprint(theSpec.AutoRenewThreshold)})
	}
	model := simulator.VPX()
	model.Cluster = theSpec.Clusters
	model.ClusterHost = theSpec.HostsPerCluster
	model.Host = 0
	model.Machine = 0
	model.Autostart = false
	must(model.Create())

	cm := &certificateManager{}
	cm.Self = types.ManagedObjectReference{Type: "CertificateManager", Value: "certificateManager"}
	simulator.Map.Put(cm)

	type hostOut struct {
		Name     string `json:"name"`
		Moref    string `json:"moref"`
		Cluster  string `json:"cluster"`
		Endpoint string `json:"endpoint"`
	}
	var hostList []hostOut
	for _, obj := range simulator.Map.All("HostSystem") {
		h := obj.(*simulator.HostSystem)
		parent := simulator.Map.Get(*h.Parent)
		cluster := ""
		if c, ok := parent.(*simulator.ClusterComputeResource); ok {
			cluster = c.Name
		} else {
			continue
		}
		hs := theSpec.Hosts[h.Name]
		nb, na := time.Now().AddDate(0, 0, -400), time.Now().AddDate(0, 0, theSpec.HostDaysLeft)
		if theSpec.HostDaysLeft == 0 {
			na = time.Now().AddDate(0, 0, 200)
		}
		if hs.Expired {
			na = time.Now().AddDate(0, 0, -2)
		}
		c := leaf(h.Name, nb, na)
		if hs.Custom {
			if corp == nil {
				corp = newRoot("Corp Issuing CA", 10)
			}
			c = leafBy(corp, h.Name, nb, na)
		}
		h.Config.Certificate = pemOf(c)
		if hs.Maintenance {
			h.Runtime.InMaintenanceMode = true
		}
		if hs.HA != "" {
			h.Runtime.DasHostState = &types.ClusterDasFdmHostState{State: hs.HA}
		}
		if hs.Vsan {
			h.Config.VsanHostConfig = &types.VsanHostConfigInfo{Enabled: types.NewBool(true)}
			vis := &vsanInternalSystem{host: h.Name, syncing: hs.VsanSyncing}
			vis.Self = types.ManagedObjectReference{Type: "HostVsanInternalSystem", Value: "vsanInternalSystem-" + h.Self.Value}
			simulator.Map.Put(vis)
			h.ConfigManager.VsanInternalSystem = &vis.Self
		}
		if hs.Disconnected || hs.Expired {
			// An expired host certificate makes vpxa drop the connection: "Not Responding".
			h.Runtime.ConnectionState = types.HostSystemConnectionStateNotResponding
			if hs.Disconnected {
				h.Runtime.ConnectionState = types.HostSystemConnectionStateDisconnected
			}
		}
		st := &hostState{name: h.Name, ref: h.Self, cluster: cluster, host: h, serving: c, stale: hs.Stale, trustedRoot: fp(root.cert.Raw)}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		must(err)
		st.port = ln.Addr().(*net.TCPAddr).Port
		s := st
		cfg := &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			mu.Lock()
			defer mu.Unlock()
			c := s.serving
			return &c, nil
		}}
		go func() {
			tl := tls.NewListener(ln, cfg)
			for {
				conn, err := tl.Accept()
				if err != nil {
					return
				}
				go func() {
					_ = conn.(*tls.Conn).Handshake()
					conn.Close()
				}()
			}
		}()
		w := &esxHost{*h}
		st.host = &w.HostSystem
		hosts[h.Name] = st
		simulator.Map.Put(w)
		hostList = append(hostList, hostOut{h.Name, h.Self.Value, cluster, fmt.Sprintf("127.0.0.1:%d", st.port)})
	}

	machineSSL := leaf("127.0.0.1", time.Now().Add(-time.Hour), time.Now().AddDate(2, 0, 0))
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{machineSSL}}
	model.Service.Listen = &url.URL{User: url.UserPassword(theSpec.User, theSpec.Password)}
	srv := model.Service.NewServer()

	ctl := http.NewServeMux()
	ctl.HandleFunc("/ctl/state", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		type hs struct {
			Cert        string `json:"certificate_sha256"`
			Serving     string `json:"serving_sha256"`
			TrustedRoot string `json:"trusted_root_sha256"`
			Connection  string `json:"connection_state"`
			Maintenance bool   `json:"maintenance"`
			Refreshes   int    `json:"refreshes"`
		}
		m := map[string]hs{}
		for n, s := range hosts {
			b, _ := pem.Decode(s.host.Config.Certificate)
			c := ""
			if b != nil {
				c = fp(b.Bytes)
			}
			m[n] = hs{c, fp(s.serving.Certificate[0]), s.trustedRoot, string(s.host.Runtime.ConnectionState), s.host.Runtime.InMaintenanceMode, s.refreshes}
		}
		_ = json.NewEncoder(w).Encode(map[string]interface{}{"hosts": m, "root_sha256": fp(root.cert.Raw)})
	})
	ctl.HandleFunc("/ctl/rotate-root", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		old := root
		root = newRoot("CA", 10)
		// The trust bundle keeps the old root too (as VECS TRUSTED_ROOTS does after a root
		// replacement): vCenter's own certificate still chains to it.
		must(ioutil.WriteFile(filepath.Join(out, "vmca-root.pem"), append(append([]byte{}, root.pem...), old.pem...), 0o644))
		fmt.Fprintln(w, fp(root.cert.Raw))
	})
	ctl.HandleFunc("/ctl/refresh-delay", func(w http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 {
			http.Error(w, "ms must be a number of milliseconds", http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		refreshDelay = time.Duration(ms) * time.Millisecond
		fmt.Fprintln(w, refreshDelay)
	})
	ctl.HandleFunc("/ctl/mode", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		theSpec.Mode = r.URL.Query().Get("set")
		modeOpt.Value = theSpec.Mode
		fmt.Fprintln(w, theSpec.Mode)
	})
	cln, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	go http.Serve(cln, ctl)

	must(ioutil.WriteFile(filepath.Join(out, "vmca-root.pem"), root.pem, 0o644))
	u := *srv.URL
	u.User = nil
	manifest, _ := json.MarshalIndent(map[string]interface{}{
		"url": u.String(), "control": "http://" + cln.Addr().String(), "hosts": hostList,
	}, "", "  ")
	tmp := filepath.Join(out, "vcsim.json.tmp")
	must(ioutil.WriteFile(tmp, manifest, 0o644))
	must(os.Rename(tmp, filepath.Join(out, "vcsim.json")))
	log.Printf("vcsim serving %s", u.String())
	select {}
}
