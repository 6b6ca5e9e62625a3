# Browse _coap._udp and _http._tcp with python-zeroconf (an mDNS implementation independent of
# suitcase's) for up to ARGV[1] seconds; print one line per service found.
import sys, time
from zeroconf import Zeroconf, ServiceBrowser, InterfaceChoice, IPVersion
found = {}
class L:
    def add_service(self, zc, ty, name):
        info = zc.get_service_info(ty, name, 3000)
        if info: found[(ty, name)] = (info.port, info.server, [str(a) for a in info.parsed_addresses()])
    def update_service(self, *a): pass
    def remove_service(self, *a): pass
zc = Zeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)
ServiceBrowser(zc, ["_coap._udp.local.", "_http._tcp.local."], L())
deadline = time.time() + float(sys.argv[1]) if len(sys.argv) > 1 else time.time() + 8
while time.time() < deadline and len(found) < 2:
    time.sleep(0.1)
for (ty, name), (port, server, addrs) in sorted(found.items()):
    print(f"{ty} {name} port={port} host={server} addrs={','.join(addrs)}")
zc.close()
