%%% mod_s2sgate: hand every remote-bound stanza to the s2sgate external component.
%%%
%%% ejabberd routes to an external component only the domains listed under its
%%% ejabberd_service listener's `hosts:'; there is no catch-all.  This module
%%% hooks `filter_packet', which ejabberd_router:do_route/1 runs for every
%%% stanza before it looks up routes.  A stanza whose recipient domain has no
%%% route (ejabberd neither serves it nor knows a component for it) and whose
%%% sender is served by a host that loads this module is sent, unchanged, to
%%% the process of a connected gateway component, exactly as the router
%%% itself sends to a route.  While no component is connected the sender gets
%%% <remote-server-timeout/> (type wait, by = the component), like Prosody's
%%% mod_component.  Everything else passes through untouched (local delivery,
%%% other components, ejabberd's own s2s).
%%%
%%% Several gateway processes (one component JID each): each remote domain
%%% goes to one of them by rendezvous (highest random weight) hashing, the
%%% same as etc/prosody/mod_s2sgate.lua: the score of a component for a domain
%%% is the first six bytes of SHA-256("<component> <remote domain>") as an
%%% integer, and the connected component with the highest score wins.  One
%%% domain's stanzas keep their order on one link; the domains of a component
%%% that is not connected go to their next-best connected one, and only those
%%% move.  "Connected" is the router's own state: the component has a live
%%% route (ejabberd_service registers it on login and removes it when the
%%% connection goes).
%%%
%%% Configuration (per host):
%%%   modules:
%%%     mod_s2sgate:
%%%       components: ["s2s1.example.com", "s2s2.example.com"]
%%%       # or, for one gateway:  component: "s2s.example.com"
%%% With several components under one ejabberd_service listener, that listener
%%% needs `global_routes: false' (otherwise each component that logs in gets
%%% the routes of all the listener's hosts); the module logs an error at start
%%% for a listener without it.
%%%
%%% APIs used, present with the same signatures in ejabberd 23.01 through
%%% 26.07 (see docs/attach-ejabberd.md): ejabberd_hooks:add/4, delete/4;
%%% ejabberd_router:is_my_route/1, host_of_route/1, get_backend/0,
%%% route_error/2; the backend's find_routes/1 and the #route{} record;
%%% ejabberd_option:listen/0 (only for the check at start; 23.01 checked);
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
start(Host, _Opts) ->
    case components(Host) of
        [] ->
            {error, <<"mod_s2sgate: set the option components (or component)">>};
        Components ->
            check_listeners(Host, Components),
            ejabberd_hooks:add(filter_packet, ?MODULE, filter_packet, ?SEQ),
            ok
    end.

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
    econf:domain();
mod_opt_type(components) ->
    econf:list(econf:domain(), [unique]).

%% One of the two must be set; filter_packet reads them through components/1.
mod_options(_Host) ->
    [{component, undefined}, {components, []}].

mod_doc() ->
    #{desc =>
          [<<"Hands every stanza for a domain that has no route to the "
             "s2sgate federation gateway (an XEP-0114 component).">>],
      opts =>
          [{components,
            #{value => <<"[Domain, ...]">>,
              desc => <<"The component JIDs of the gateway processes, each one of "
                        "the hosts of an ejabberd_service listener with "
                        "check_from: false and global_routes: false. Each "
                        "remote domain goes to one of them (rendezvous hashing "
                        "of the domain).">>}},
           {component,
            #{value => <<"Domain">>,
              desc => <<"One gateway: the same as components with one JID.">>}}]}.

%% An ejabberd_service listener registers, by default (global_routes: true),
%% the routes of ALL its hosts for every component that logs in to it.  With
%% several of our components under one such listener each gateway process
%% then has the route of every component JID: which component is connected
%% can no longer be told, and domains go wherever the routes' order says,
%% not where the hash says.  Name such a listener in the log.
check_listeners(Host, Components) when length(Components) > 1 ->
    try ejabberd_option:listen() of
        Listeners ->
            [?ERROR_MSG("mod_s2sgate (~ts): the ejabberd_service listener on port ~p "
                        "lists the components ~ts with global_routes: true; each "
                        "gateway process logging in there gets the routes of all of "
                        "them and remote domains are not spread by their hash. Set "
                        "global_routes: false on that listener (or give each "
                        "component its own listener)",
                        [Host, Port, lists:join(<<", ">>, Shared)])
             || {{Port, _IP, _Transport}, ejabberd_service, Opts} <- Listeners,
                maps:get(global_routes, Opts, true) =/= false,
                Shared <- [[C || {C, _} <- maps:get(hosts, Opts, []),
                                 lists:member(C, Components)]],
                length(Shared) > 1],
            ok
    catch Class:Reason ->
            ?WARNING_MSG("mod_s2sgate (~ts): could not check the ejabberd_service "
                         "listeners: ~p:~p", [Host, Class, Reason])
    end;
check_listeners(_Host, _Components) ->
    ok.

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
            case gateways_for(xmpp:get_from(Pkt)) of
                [] ->
                    Pkt;
                Components ->
                    hand_over(rank(Components, To), To, Pkt),
                    {stop, drop}
            end
    end.

%% The gateways of the sender's host: a local user, the host itself or one of
%% its services (conference.example.com ...).  A sender that is not ours, or
%% one of the gateways itself, is left to ejabberd (never echo a component's
%% stanza back to it).
gateways_for(#jid{lserver = From}) ->
    try ejabberd_router:host_of_route(From) of
        Host ->
            case gen_mod:is_loaded(Host, ?MODULE) of
                true ->
                    Components = components(Host),
                    case lists:member(From, Components) of
                        true -> [];
                        false -> Components
                    end;
                false ->
                    []
            end
    catch error:_ ->
            []
    end;
gateways_for(_) ->
    [].

components(Host) ->
    case gen_mod:get_module_opt(Host, ?MODULE, components) of
        [] ->
            case gen_mod:get_module_opt(Host, ?MODULE, component) of
                undefined -> [];
                Component -> [Component]
            end;
        Components ->
            Components
    end.

%% The components in preference order for one remote domain.
rank(Components, RemoteDomain) ->
    Scored = [{-score(C, RemoteDomain), I, C}
              || {I, C} <- lists:zip(lists:seq(1, length(Components)), Components)],
    [C || {_, _, C} <- lists:sort(Scored)].

score(Component, RemoteDomain) ->
    <<Score:48, _/binary>> = crypto:hash(sha256, [Component, <<" ">>, RemoteDomain]),
    Score.

%% The first connected component of the ranking; the best one's bounce while
%% none is connected.
hand_over(Ranked, RemoteDomain, Pkt) ->
    case connected(Ranked) of
        none ->
            Component = hd(Ranked),
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
            %% Several processes may also log in as the same component:
            %% one remote domain always goes through the same one.
            #route{pid = Pid} = lists:nth(erlang:phash2(RemoteDomain, length(Routes)) + 1,
                                          Routes),
            ejabberd_cluster:send(Pid, {route, Pkt})
    end.

connected([]) ->
    none;
connected([Component | Rest]) ->
    case component_routes(Component) of
        [] -> connected(Rest);
        Routes -> Routes
    end.

%% The component's live routes, read from the router backend: the router's
%% own find_routes/1 is not exported.
component_routes(Component) ->
    Backend = ejabberd_router:get_backend(),
    case Backend:find_routes(Component) of
        {ok, Routes} -> lists:sort([R || #route{pid = Pid} = R <- Routes, is_pid(Pid)]);
        _ -> []
    end.
