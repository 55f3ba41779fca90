-- mod_s2sgate: hand every remote-bound stanza to the s2sgate external component.
--
-- Prosody 0.12's core/stanza_router.lua fires "route/remote" on the *sending*
-- host for every stanza addressed to a domain that is not served locally.
-- mod_s2s hooks that event at priorities -1/-10; when nobody handles it the
-- router bounces <not-allowed/>.  This module hooks it at priority 10 and
-- re-fires the stanza's own event (message/bare, iq/full, presence/host, ...)
-- on the component's host, exactly like core_post_stanza does for local
-- deliveries.  mod_component then writes the stanza, unchanged, to the
-- connected component (s2sgate), or bounces <remote-server-timeout/> while
-- no component is connected.
--
-- Configuration (global or per host):
--   s2sgate_component = "s2s.example.com"  -- JID of the s2sgate Component
--
-- Load it globally (modules_enabled) AND in every internal Component section
-- that must reach remote JIDs (MUC, pubsub, ...): internal components do not
-- inherit the global modules_enabled list.

local jid_split = require "util.jid".split;

local hosts = prosody.hosts;
local component = module:get_option_string("s2sgate_component");

if not component then
	-- Shared across all hosts that load the module: log the error only once.
	local state = module:shared("/*/s2sgate/state");
	if not state.missing_logged then
		state.missing_logged = true;
		module:log("error", "s2sgate_component is not set; remote stanzas will not be routed to s2sgate");
	end
	return;
end

local warned_missing = false;

local function route_remote(event)
	local origin, stanza = event.origin, event.stanza;
	local component_host = hosts[component];
	if not component_host then
		if not warned_missing then
			module:log("error", "s2sgate_component %q is not a configured Component on this server", component);
			warned_missing = true;
		end
		return; -- let the router bounce not-allowed
	end
	warned_missing = false;

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

	module:log("debug", "Routing %s to %s via %s", stanza.name, tostring(stanza.attr.to), component);
	component_host.events.fire_event(stanza.name .. to_type, { origin = origin, stanza = stanza });
	-- Handled (delivered or bounced by mod_component): stop mod_s2s and the
	-- router's not-allowed bounce.
	return true;
end

module:hook("route/remote", route_remote, 10);
