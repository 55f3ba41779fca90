-- mod_s2sgate: hand every remote-bound stanza to an s2sgate external component.
--
-- Prosody 0.12's core/stanza_router.lua fires "route/remote" on the *sending*
-- host for every stanza addressed to a domain that is not served locally.
-- mod_s2s hooks that event at priorities -1/-10; when nobody handles it the
-- router bounces <not-allowed/>.  This module hooks it at priority 10 and
-- re-fires the stanza's own event (message/bare, iq/full, presence/host, ...)
-- on the chosen component's host, exactly like core_post_stanza does for
-- local deliveries.  mod_component then writes the stanza, unchanged, to the
-- connected component (s2sgate), or bounces <remote-server-timeout/> while
-- no component is connected.
--
-- Several gateway processes (one component JID each): every remote domain
-- goes to one of them, chosen by rendezvous (highest random weight) hashing
-- of the remote domain: the score of a component for a domain is the first
-- six bytes of SHA-256("<component> <remote domain>") read as a number, and
-- the connected component with the highest score wins.  One domain's stanzas
-- therefore keep their order on one link; when that component is not
-- connected its domains go to their next-best connected component, and
-- only those move (the other components keep theirs).  "Connected" is
-- mod_component's own flag (the one it checks before refusing a second
-- connection): it turns false as soon as Prosody sees the link close.
--
-- Configuration (global or per host):
--   s2sgate_components = { "s2s1.example.com", "s2s2.example.com" }
--   s2sgate_component = "s2s.example.com"   -- one gateway (same as a list of one)
--
-- Load it globally (modules_enabled) AND in every internal Component section
-- that must reach remote JIDs (MUC, pubsub, ...): internal components do not
-- inherit the global modules_enabled list.

local jid_split = require "util.jid".split;
local sha256 = require "util.hashes".sha256;
local new_cache = require "util.cache".new;

local hosts = prosody.hosts;
local byte = string.byte;

local components = module:get_option_array("s2sgate_components");
local single = module:get_option_string("s2sgate_component");
if components and single then
	module:log("error", "both s2sgate_components and s2sgate_component are set; using s2sgate_components");
elseif not components and single then
	components = { single };
end

if not components or #components == 0 then
	-- Shared across all hosts that load the module: log the error only once.
	local state = module:shared("/*/s2sgate/state");
	if not state.missing_logged then
		state.missing_logged = true;
		module:log("error", "s2sgate_components is not set; remote stanzas will not be routed to s2sgate");
	end
	return;
end

local function score(component, domain)
	local h = sha256(component .. " " .. domain);
	local a, b, c, d, e, f = byte(h, 1, 6);
	return ((((a * 256 + b) * 256 + c) * 256 + d) * 256 + e) * 256 + f;
end

-- The components in preference order for one remote domain (fixed for a
-- given list, so cached; bounded so that many domains cannot grow it).
local rankings = new_cache(10000);

local function ranking(domain)
	local ranked = rankings:get(domain);
	if ranked then return ranked; end
	local scored = {};
	for i, component in ipairs(components) do
		scored[i] = { component = component, score = score(component, domain), index = i };
	end
	table.sort(scored, function (x, y)
		if x.score ~= y.score then return x.score > y.score; end
		return x.index < y.index;
	end);
	ranked = {};
	for i, s in ipairs(scored) do ranked[i] = s.component; end
	rankings:set(domain, ranked);
	return ranked;
end

-- mod_component keeps its state in its per-host module environment.
local function connected(component)
	local host = hosts[component];
	local mod = host and host.modules.component;
	return mod and mod.connected or false;
end

-- The connected component with the best score for the domain; the best
-- configured one when none is connected (mod_component then bounces).
local function choose(domain)
	local ranked = ranking(domain);
	for _, component in ipairs(ranked) do
		if connected(component) then return component; end
	end
	for _, component in ipairs(ranked) do
		if hosts[component] then return component; end
	end
	return nil, ranked[1];
end

local warned_missing = {};

local function route_remote(event)
	local origin, stanza = event.origin, event.stanza;

	-- Same event naming as core_post_stanza: <name>/bare|full|host, from 'to'.
	local node, host, resource = jid_split(stanza.attr.to);
	local to_type;
	if node then
		to_type = resource and "/full" or "/bare";
	elseif host then
		to_type = "/host";
	else
		to_type = "/bare";
	end

	local component, missing = choose(host or "");
	if not component then
		if not warned_missing[missing] then
			module:log("error", "s2sgate component %q is not a configured Component on this server", missing);
			warned_missing[missing] = true;
		end
		return; -- let the router bounce not-allowed
	end

	module:log("debug", "Routing %s to %s via %s", stanza.name, tostring(stanza.attr.to), component);
	hosts[component].events.fire_event(stanza.name .. to_type, { origin = origin, stanza = stanza });
	-- Handled (delivered or bounced by mod_component): stop mod_s2s and the
	-- router's not-allowed bounce.
	return true;
end

module:hook("route/remote", route_remote, 10);
