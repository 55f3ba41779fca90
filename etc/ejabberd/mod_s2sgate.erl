%%% mod_s2sgate: hand every remote-bound stanza to the s2sgate external component.
%%%
%%% ejabberd routes to an external component only the domains listed under its
%%% ejabberd_service listener's `hosts:'; there is no catch-all.  This module
%%% hooks `filter_packet', which ejabberd_router:do_route/1 runs for every
%%% stanza before it looks up routes.  A stanza whose recipient domain has no
%%% route (ejabberd neither serves it nor knows a component for it) and whose
%%% sender is served by a host that loads this module is sent, unchanged, to
%%% the process of the connected component named by the option `component',
%%% exactly as the router itself sends to a route.  While that component is
%%% not connected the sender gets <remote-server-timeout/> (type wait, by = the
%%% component), like Prosody's mod_component.  Everything else passes through
%%% untouched (local delivery, other components, ejabberd's own s2s).
%%%
%%% Configuration (per host):
%%%   modules:
%%%     mod_s2sgate:
%%%       component: "s2s.example.com"   # the gateway's [component] jid
%%%
%%% APIs used, present with the same signatures in ejabberd 23.01 through
%%% 26.07 (see docs/attach-ejabberd.md): ejabberd_hooks:add/4, delete/4;
%%% ejabberd_router:is_my_route/1, host_of_route/1, get_backend/0,
%%% route_error/2; the backend's find_routes/1 and the #route{} record;
%%% ejabberd_cluster:send/2; gen_mod:get_module_opt/3, is_loaded/2,
%%% is_loaded_elsewhere/2; econf:domain/0.
%%%
%%% Build on Debian 12 (ejabberd 23.01): see docs/attach-ejabberd.md.

-module(mod_s2sgate).
-behaviour(gen_mod).

-export([start/2, stop/1, reload/3, depends/2, mod_opt_type/1, mod_options/1,
         mod_doc/0]).
-export([filter_packet/1]).

-include("logger.hrl").
-include("ejabberd_router.hrl").
-include_lib("xmpp/include/xmpp.hrl").

%% After any other filter_packet hook: they see the stanza first.
-define(SEQ, 100).

%%%===================================================================
%%% gen_mod
%%%===================================================================

%% filter_packet is a global hook: adding it again for another host is a
%% no-op (ejabberd_hooks keeps one entry), removing it waits for the last host.
start(_Host, _Opts) ->
    ejabberd_hooks:add(filter_packet, ?MODULE, filter_packet, ?SEQ),
    ok.

stop(Host) ->
    case gen_mod:is_loaded_elsewhere(Host, ?MODULE) of
        false -> ejabberd_hooks:delete(filter_packet, ?MODULE, filter_packet, ?SEQ);
        true -> ok
    end,
    ok.

%% The option is read for every stanza, so a reload needs nothing else.
reload(_Host, _NewOpts, _OldOpts) ->
    ok.

depends(_Host, _Opts) ->
    [].

mod_opt_type(component) ->
    econf:domain().

%% A bare atom: the option is required.
mod_options(_Host) ->
    [component].

mod_doc() ->
    #{desc =>
          [<<"Hands every stanza for a domain that has no route to the "
             "s2sgate federation gateway (an XEP-0114 component).">>],
      opts =>
          [{component,
            #{value => <<"Domain">>,
              desc => <<"The gateway's component JID, one of the hosts of an "
                        "ejabberd_service listener with check_from: false.">>}}]}.

%%%===================================================================
%%% Hook
%%%===================================================================

-spec filter_packet(stanza() | drop) -> stanza() | drop | {stop, drop}.
filter_packet(drop) ->
    drop;
filter_packet(Pkt) ->
    %% A crash here would only be logged by ejabberd_hooks and the stanza
    %% would then bounce `forbidden' from ejabberd_s2s, looking like "module
    %% not loaded": log it ourselves, with the stanza.
    try route_remote(Pkt)
    catch Class:Reason:Stack ->
            ?ERROR_MSG("mod_s2sgate: failed to route~n~ts~n** ~p:~p ~p",
                       [xmpp:pp(Pkt), Class, Reason, Stack]),
            Pkt
    end.

route_remote(Pkt) ->
    #jid{lserver = To} = xmpp:get_to(Pkt),
    case ejabberd_router:is_my_route(To) of
        true ->
            Pkt;
        false ->
            case gateway_for(xmpp:get_from(Pkt)) of
                undefined ->
                    Pkt;
                Component ->
                    hand_over(Component, To, Pkt),
                    {stop, drop}
            end
    end.

%% The gateway of the sender's host: a local user, the host itself or one of
%% its services (conference.example.com ...).  A sender that is not ours, or
%% the gateway itself, is left to ejabberd (never echo a component's stanza
%% back to it).
gateway_for(#jid{lserver = From}) ->
    try ejabberd_router:host_of_route(From) of
        Host ->
            case gen_mod:is_loaded(Host, ?MODULE) of
                true ->
                    case gen_mod:get_module_opt(Host, ?MODULE, component) of
                        From -> undefined;
                        Component -> Component
                    end;
                false ->
                    undefined
            end
    catch error:_ ->
            undefined
    end;
gateway_for(_) ->
    undefined.

hand_over(Component, RemoteDomain, Pkt) ->
    case component_routes(Component) of
        [] ->
            ?WARNING_MSG("mod_s2sgate: component ~ts is not connected; bouncing ~ts "
                         "from ~ts to ~ts",
                         [Component, element(1, Pkt), jid:encode(xmpp:get_from(Pkt)),
                          jid:encode(xmpp:get_to(Pkt))]),
            Lang = xmpp:get_lang(Pkt),
            Err = xmpp:err_remote_server_timeout(
                    <<"The federation gateway is not connected">>, Lang),
            %% route_error/2 sends nothing for type error or result.
            ejabberd_router:route_error(Pkt, Err#stanza_error{by = jid:make(Component)});
        Routes ->
            %% Several gateway processes may log in as the same component:
            %% one remote domain always goes through the same one.
            #route{pid = Pid} = lists:nth(erlang:phash2(RemoteDomain, length(Routes)) + 1,
                                          Routes),
            ejabberd_cluster:send(Pid, {route, Pkt})
    end.

%% The component's live routes, read from the router backend: the router's
%% own find_routes/1 is not exported.
component_routes(Component) ->
    Backend = ejabberd_router:get_backend(),
    case Backend:find_routes(Component) of
        {ok, Routes} -> lists:sort([R || #route{pid = Pid} = R <- Routes, is_pid(Pid)]);
        _ -> []
    end.
