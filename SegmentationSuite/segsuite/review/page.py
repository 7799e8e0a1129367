"""The review report: one HTML page (no network needed) and a folder of view images beside it.

A subject is a card with one panel per engine: its views (three layers: the image with orientation
letters, the labels filled, the labels outlined; outline, fill or none, with an opacity), a legend of
the label names and colours, and the rating: Pass / Fail / Artifact / Skip with a note. Ratings are
kept in the browser (localStorage, under the report's own key) and exported as a TSV with the columns
of ``RATING_COLUMNS`` that ``segsuite group --qc-ratings`` reads; an exported file can be imported again.

Scale: the page holds every subject's data as one JSON block (about 0.5-1 kB per subject and engine)
and shows one page of subjects at a time (filters: text, flagged only, unrated only, engine); the
images are separate files loaded when their card is on screen (``loading="lazy"``).
"""

from __future__ import annotations

import hashlib
import html
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..qcviews import CONVENTION

RATINGS = ("pass", "fail", "artifact", "skip")
RATING_COLUMNS = ("participant_id", "session_id", "engine", "rating", "note", "rater", "time")
KEYS_HELP = [("P / F / A / S", "rate the selected panel Pass, Fail, Artifact, Skip (then the next panel)"),
             ("N", "write a note for the selected panel (Enter to go back to the keys)"),
             ("J / K or \u2193 / \u2191", "next / previous panel"), ("U", "next unrated panel (any page)"),
             ("Enter or click", "enlarge the selected views (Esc closes, + / - zoom)"),
             ("O", "overlay: outline, filled, none"), ("[ / ]", "overlay opacity down / up"),
             ("H", "hide / show the overlay"), ("< / >", "previous / next page")]


def files_folder(report_path: str | os.PathLike) -> Path:
    """The folder of a report's view images: ``<report stem>_files`` beside it."""
    report_path = Path(report_path)
    return report_path.with_name(report_path.name.rsplit(".", 1)[0] + "_files")


def report_id(report_path: str | os.PathLike) -> str:
    """The key a report's ratings are kept under in the browser: the same report file, the same key."""
    return hashlib.sha256(str(Path(report_path).resolve()).encode()).hexdigest()[:16]


def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number, 4) if np.isfinite(number) else None


def legend_key(engine: str, rated: bool = True) -> str:
    """The page's legend table of a panel: per engine, the reference panels apart (their label values
    mean other things, as SAMSEG's labels beside the filter's before/after mask)."""
    return engine if rated else f"{engine}:reference"


def page_data(report_path, subjects: Sequence[dict], title: str, columns: Sequence[str] = ()) -> dict:
    """The page's JSON. ``subjects``: dicts with participant_id, session_id, rank, n_flags, reasons,
    values ({column: number}) and views (entries of views.write_views, files relative to the report's
    files folder)."""
    folder = files_folder(report_path).name
    legends: dict = {}
    rows = []
    for subject in subjects:
        panels = []
        for entry in subject.get("views", []):
            if entry is None:
                continue
            legend = legends.setdefault(legend_key(entry["engine"], entry.get("rated", True)), {})
            for value, name, colour in entry.get("legend", []):
                legend[str(value)] = [name, colour]
            panels.append({"e": entry["engine"], "t": entry.get("title", entry["engine"]), "r": entry.get("rated", True),
                           "w": entry["width"], "h": entry["height"],
                           "f": {layer: f"{folder}/{name}" for layer, name in entry["files"].items()},
                           "tiles": entry.get("tiles", []), "l": [v for v, _, _ in entry.get("legend", [])]})
        rows.append({"p": str(subject["participant_id"]), "s": str(subject.get("session_id") or ""),
                     "rank": int(subject.get("rank", len(rows) + 1)), "n": int(subject.get("n_flags", 0)),
                     "why": str(subject.get("reasons", "") or ""),
                     "v": [_number(subject.get("values", {}).get(column)) for column in columns],
                     "views": panels, "missing": subject.get("missing", [])})
    return {"id": report_id(report_path), "title": title, "columns": list(columns), "legends": legends,
            "subjects": rows, "ratings": list(RATINGS), "tsv": list(RATING_COLUMNS),
            "export": Path(report_path).name.rsplit(".", 1)[0] + "_ratings.tsv"}


_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{padding:8px 14px} h1{font-size:1.35em;margin:.2em 0} h2{font-size:1.1em}
.convention{background:#fff8d6;border:1px solid #e6d47a;padding:4px 8px;display:inline-block;font-size:13px}
.controls{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid #ccc;padding:6px 14px;
  display:flex;flex-wrap:wrap;gap:8px 14px;align-items:center;font-size:13px}
.controls input[type=search]{width:12em} #progress{font-weight:600}
.card{background:#fff;border:1px solid #ddd;margin:10px 14px;padding:6px 10px;border-radius:4px}
.card.flagged{border-left:5px solid #cc3311} .card.clean{border-left:5px solid #4477aa}
.head{display:flex;gap:14px;flex-wrap:wrap;align-items:baseline;font-size:13px}
.head .id{font-weight:700;font-size:15px} .why{color:#a31} .values{color:#555;font-variant-numeric:tabular-nums}
.panels{display:flex;flex-wrap:wrap;gap:10px;margin-top:6px}
.panel{border:2px solid transparent;padding:4px;border-radius:4px;background:#f4f4f4}
.panel.current{border-color:#0077bb;background:#e8f2fb}
.panel .title{font-weight:600;font-size:13px;margin-bottom:3px}
.stack{position:relative;background:#000;cursor:zoom-in}
.stack img{position:absolute;left:0;top:0;width:100%;height:100%;image-rendering:pixelated}
.stack img.ov{opacity:var(--opacity,0.6)} body.hide-ov .stack img.ov{display:none}
.legend{display:flex;flex-wrap:wrap;gap:2px 8px;font-size:11px;max-width:460px;margin-top:3px}
.legend span.chip{display:inline-block;width:10px;height:10px;margin-right:3px;vertical-align:middle;border:1px solid #888}
.rate{display:flex;gap:4px;align-items:center;margin-top:4px;font-size:12px;flex-wrap:wrap}
.rate button{font-size:12px;padding:2px 7px;border:1px solid #999;background:#fff;border-radius:3px;cursor:pointer}
.rate button.on.pass{background:#2e8b57;color:#fff} .rate button.on.fail{background:#c0392b;color:#fff}
.rate button.on.artifact{background:#e69f00;color:#fff} .rate button.on.skip{background:#777;color:#fff}
.rate input.note{width:16em;font-size:12px}
.badge{font-size:11px;padding:1px 6px;border-radius:8px;background:#ddd}
#modal{display:none;position:fixed;inset:0;background:rgba(0,0,0,.92);z-index:10;overflow:auto;color:#eee}
#modal.open{display:block} #modal .bar{position:sticky;top:0;padding:6px 12px;background:#111;font-size:14px}
#modal .stack{margin:10px auto;cursor:zoom-out} #modal .legend{max-width:none;margin:6px 12px;color:#eee}
.keys{font-size:12px;color:#444} .keys kbd{background:#eee;border:1px solid #bbb;border-radius:3px;padding:0 4px}
.pager button{font-size:12px} #message{color:#064}
.figures img{max-width:100%}
"""

_SCRIPT = r"""
(function(){
'use strict';
var D=JSON.parse(document.getElementById('report-data').textContent);
var KEY='segsuite-qc-ratings:'+D.id, RATER='segsuite-qc-rater';
var store={}; try{store=JSON.parse(localStorage.getItem(KEY)||'{}')||{};}catch(e){store={};}
var $=function(id){return document.getElementById(id);};
var state={page:0,size:parseInt($('page-size').value,10),current:0,mode:'outline',list:[],panels:[]};
function rkey(p,s,e){return p+'\t'+(s||'')+'\t'+e;}
function save(){localStorage.setItem(KEY,JSON.stringify(store));}
function esc(t){return String(t).replace(/[&<>"']/g,function(c){return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c];});}
function ofEngine(v,engine){return !engine||v.e===engine||v.e.indexOf(engine+'[')===0;}
function rated(s,v){var r=store[rkey(s.p,s.s,v.e)];return r&&r.rating;}
function unratedPanels(s){return s.views.filter(function(v){return v.r&&!rated(s,v);});}
function filtered(){
  var text=$('filter').value.toLowerCase(), flagged=$('flagged-only').checked, unrated=$('unrated-only').checked,
      engine=$('engine').value;
  return D.subjects.filter(function(s){
    if(text&&(s.p+' '+s.s).toLowerCase().indexOf(text)<0) return false;
    if(flagged&&!s.n) return false;
    if(engine&&!s.views.some(function(v){return ofEngine(v,engine);})) return false;
    if(unrated&&!unratedPanels(s).length) return false;
    return true;});
}
function progress(){
  var total=0,done=0,fails=0;
  D.subjects.forEach(function(s){s.views.forEach(function(v){if(!v.r)return;total++;var r=rated(s,v);if(r){done++;if(r==='fail')fails++;}});});
  $('progress').textContent='rated '+done+' of '+total+(total?' ('+Math.round(100*done/total)+'%)':'')+', '+fails+' fail';
  $('progress').dataset.done=done; $('progress').dataset.total=total;
}
function stackHtml(v,scale){
  var w=Math.round(v.w*scale), h=Math.round(v.h*scale);
  var ov=state.mode==='none'?'':'<img class="ov" loading="lazy" decoding="async" alt="" src="'+esc(v.f[state.mode==='fill'?'fill':'outline'])+'">';
  return '<div class="stack" style="width:'+w+'px;height:'+h+'px"><img class="base" loading="lazy" decoding="async" alt="views" src="'+esc(v.f.base)+'">'+ov+'</div>';
}
function legendHtml(v){
  var table=D.legends[v.r?v.e:v.e+':reference']||{};
  return '<div class="legend">'+v.l.map(function(value){var item=table[String(value)]||['label '+value,'#888'];
    return '<span><span class="chip" style="background:'+item[1]+'"></span>'+esc(value)+' '+esc(item[0])+'</span>';}).join('')+'</div>';
}
function rateHtml(s,v){
  if(!v.r) return '<div class="rate"><span class="badge">reference, not rated</span></div>';
  var r=store[rkey(s.p,s.s,v.e)]||{};
  return '<div class="rate">'+D.ratings.map(function(name){
      return '<button type="button" class="'+name+(r.rating===name?' on':'')+'" data-rate="'+name+'">'+name.charAt(0).toUpperCase()+name.slice(1)+'</button>';}).join('')+
    '<input class="note" type="text" placeholder="note" value="'+esc(r.note||'')+'"> <span class="badge status">'+esc(r.rating||'unrated')+'</span></div>';
}
function render(){
  state.list=filtered();
  var pages=Math.max(1,Math.ceil(state.list.length/state.size));
  state.page=Math.min(state.page,pages-1);
  var start=state.page*state.size, shown=state.list.slice(start,start+state.size);
  $('pageinfo').textContent='page '+(state.page+1)+' of '+pages+' ('+state.list.length+' subjects)';
  $('shown').textContent=state.list.length;
  var width=parseInt($('thumb').value,10);
  var engine=$('engine').value;
  state.panels=[];
  $('subjects').innerHTML=shown.map(function(s){
    var values=D.columns.map(function(c,i){return s.v[i]===null?'':esc(c)+' '+esc(s.v[i]);}).filter(Boolean).join(' \u00b7 ');
    var panels=s.views.filter(function(v){return ofEngine(v,engine);}).map(function(v){
      var index=state.panels.length; state.panels.push({s:s,v:v});
      var scale=Math.min(4,width/v.w);
      return '<div class="panel" data-index="'+index+'" data-engine="'+esc(v.e)+'"><div class="title">'+esc(v.t)+'</div>'+
        stackHtml(v,scale)+legendHtml(v)+rateHtml(s,v)+'</div>';}).join('');
    var missing=s.missing&&s.missing.length?'<div class="why">no views: '+esc(s.missing.join('; '))+'</div>':'';
    return '<section class="card '+(s.n?'flagged':'clean')+'" data-id="'+esc(s.p)+'" data-session="'+esc(s.s)+'">'+
      '<div class="head"><span>#'+s.rank+'</span><span class="id">'+esc(s.p)+'</span><span>'+esc(s.s)+'</span>'+
      '<span>'+(s.n?s.n+' flag'+(s.n>1?'s':''):'no flag')+'</span><span class="why">'+esc(s.why)+'</span>'+
      '<span class="values">'+values+'</span></div><div class="panels">'+panels+'</div>'+missing+'</section>';
  }).join('');
  state.current=Math.min(state.current,Math.max(0,state.panels.length-1));
  select(state.current,false);
  progress();
}
function select(index,scroll){
  var nodes=document.querySelectorAll('#subjects .panel');
  nodes.forEach(function(n){n.classList.remove('current');});
  if(!nodes.length) return;
  state.current=Math.max(0,Math.min(index,nodes.length-1));
  var node=nodes[state.current]; node.classList.add('current');
  if(scroll!==false) node.scrollIntoView({block:'center'});
}
function currentPanel(){return state.panels[state.current];}
function setRating(index,rating){
  var item=state.panels[index]; if(!item||!item.v.r) return;
  var k=rkey(item.s.p,item.s.s,item.v.e), old=store[k]||{};
  var node=document.querySelectorAll('#subjects .panel')[index];
  store[k]={rating:rating,note:node?node.querySelector('input.note').value:(old.note||''),
            rater:$('rater').value||old.rater||'',time:new Date().toISOString()};
  save();
  if(node){node.querySelectorAll('button[data-rate]').forEach(function(b){b.classList.toggle('on',b.dataset.rate===rating);});
           node.querySelector('.status').textContent=rating;}
  progress();
}
function setNote(index,note){
  var item=state.panels[index]; if(!item||!item.v.r) return;
  var k=rkey(item.s.p,item.s.s,item.v.e), old=store[k];
  if(!old){return;}
  old.note=note; old.time=new Date().toISOString(); save();
}
function nextUnrated(){
  var engine=$('engine').value;
  for(var i=0;i<state.list.length;i++){
    var s=state.list[i];
    var found=s.views.filter(function(v){return ofEngine(v,engine)&&v.r&&!rated(s,v);})[0];
    if(!found) continue;
    var page=Math.floor(i/state.size);
    if(page!==state.page){state.page=page;render();}
    for(var j=0;j<state.panels.length;j++){if(state.panels[j].s===s&&state.panels[j].v===found){select(j);return true;}}
  }
  $('message').textContent='every shown panel is rated'; return false;
}
function enlarge(index){
  var item=state.panels[index]; if(!item) return;
  select(index,false);
  var v=item.v, zoom=parseFloat($('modal').dataset.zoom||'0');
  if(!zoom){zoom=Math.max(1,Math.floor(Math.min((window.innerWidth-30)/v.w,(window.innerHeight-90)/v.h)*2)/2);}
  $('modal').dataset.zoom=zoom;
  var r=store[rkey(item.s.p,item.s.s,v.e)]||{};
  $('modal').innerHTML='<div class="bar">'+esc(item.s.p)+' '+esc(item.s.s)+' \u00b7 '+esc(v.t)+' \u00b7 '+esc(r.rating||'unrated')+
    ' \u00b7 zoom '+zoom+'x (image pixels at their own resolution) \u00b7 Esc closes</div>'+stackHtml(v,zoom)+legendHtml(v);
  $('modal').classList.add('open'); $('modal').dataset.index=index;
}
function closeModal(){$('modal').classList.remove('open');$('modal').dataset.zoom='';}
function tsvCell(t){return String(t==null?'':t).replace(/[\t\r\n]+/g,' ');}
function exportTsv(){
  var lines=[D.tsv.join('\t')];
  D.subjects.forEach(function(s){s.views.forEach(function(v){
    var r=store[rkey(s.p,s.s,v.e)]; if(!r||!r.rating) return;
    lines.push([s.p,s.s||'n/a',v.e,r.rating,r.note||'',r.rater||'',r.time||''].map(tsvCell).join('\t'));});});
  var blob=new Blob([lines.join('\n')+'\n'],{type:'text/tab-separated-values'});
  var a=document.createElement('a'); a.href=URL.createObjectURL(blob); a.download=D.export;
  document.body.appendChild(a); a.click(); setTimeout(function(){URL.revokeObjectURL(a.href);a.remove();},1000);
  $('message').textContent='exported '+(lines.length-1)+' ratings as '+D.export;
}
function importTsv(text){
  var rows=text.split(/\r?\n/).filter(function(l){return l.trim();});
  if(!rows.length) return;
  var head=rows[0].split('\t'), col={};
  head.forEach(function(h,i){col[h.trim()]=i;});
  var missing=['participant_id','engine','rating'].filter(function(c){return !(c in col);});
  if(missing.length){$('message').textContent='not a ratings TSV: no '+missing.join(', ')+' column';return;}
  var count=0;
  rows.slice(1).forEach(function(line){
    var cells=line.split('\t'), get=function(c){return c in col?(cells[col[c]]||'').trim():'';};
    var rating=get('rating').toLowerCase(); if(D.ratings.indexOf(rating)<0) return;
    var session=get('session_id'); if(session==='n/a') session='';
    store[rkey(get('participant_id'),session,get('engine'))]={rating:rating,note:get('note'),rater:get('rater'),time:get('time')};
    count++;});
  save(); render(); $('message').textContent='imported '+count+' ratings';
}
$('subjects').addEventListener('click',function(event){
  var panel=event.target.closest('.panel'); if(!panel) return;
  var index=parseInt(panel.dataset.index,10);
  var button=event.target.closest('button[data-rate]');
  if(button){select(index,false);setRating(index,button.dataset.rate);return;}
  if(event.target.closest('.stack')){enlarge(index);return;}
  if(!event.target.closest('input')) select(index,false);
});
$('subjects').addEventListener('input',function(event){
  if(!event.target.classList.contains('note')) return;
  var index=parseInt(event.target.closest('.panel').dataset.index,10); setNote(index,event.target.value);
});
$('subjects').addEventListener('focusin',function(event){
  var panel=event.target.closest('.panel'); if(panel) select(parseInt(panel.dataset.index,10),false);
});
$('modal').addEventListener('click',closeModal);
['filter','flagged-only','unrated-only','engine'].forEach(function(id){$(id).addEventListener('input',function(){state.page=0;state.current=0;render();});});
$('page-size').addEventListener('change',function(){state.size=parseInt(this.value,10);state.page=0;render();});
$('thumb').addEventListener('change',render);
$('prev').addEventListener('click',function(){if(state.page>0){state.page--;state.current=0;render();}});
$('next').addEventListener('click',function(){state.page++;state.current=0;render();});
$('mode').addEventListener('change',function(){state.mode=this.value;render();});
$('opacity').addEventListener('input',function(){document.body.style.setProperty('--opacity',this.value);});
$('rater').value=localStorage.getItem(RATER)||'';
$('rater').addEventListener('input',function(){localStorage.setItem(RATER,this.value);});
$('next-unrated').addEventListener('click',nextUnrated);
$('export').addEventListener('click',exportTsv);
$('import').addEventListener('change',function(){
  var file=this.files[0]; if(!file) return; var reader=new FileReader();
  reader.onload=function(){importTsv(String(reader.result));}; reader.readAsText(file); this.value='';
});
document.addEventListener('keydown',function(event){
  var target=event.target;
  if(target&&(target.tagName==='INPUT'||target.tagName==='SELECT'||target.tagName==='TEXTAREA')){
    if(event.key==='Enter'||event.key==='Escape'){target.blur();}
    return;
  }
  if(event.ctrlKey||event.metaKey||event.altKey) return;
  var key=event.key, open=$('modal').classList.contains('open');
  if(open){
    if(key==='Escape'){closeModal();}
    else if(key==='+'||key==='='){$('modal').dataset.zoom=parseFloat($('modal').dataset.zoom)+0.5;enlarge(state.current);}
    else if(key==='-'){$('modal').dataset.zoom=Math.max(0.5,parseFloat($('modal').dataset.zoom)-0.5);enlarge(state.current);}
    else if('pfas'.indexOf(key.toLowerCase())>=0&&key.length===1){setRating(state.current,{p:'pass',f:'fail',a:'artifact',s:'skip'}[key.toLowerCase()]);enlarge(state.current);}
    event.preventDefault(); return;
  }
  var lower=key.length===1?key.toLowerCase():key;
  var ratingKeys={p:'pass',f:'fail',a:'artifact',s:'skip'};
  if(ratingKeys[lower]){setRating(state.current,ratingKeys[lower]);select(state.current+1);}
  else if(lower==='j'||key==='ArrowDown'){select(state.current+1);}
  else if(lower==='k'||key==='ArrowUp'){select(state.current-1);}
  else if(lower==='u'){nextUnrated();}
  else if(key==='Enter'||lower==='e'){enlarge(state.current);}
  else if(lower==='n'){var node=document.querySelectorAll('#subjects .panel')[state.current];var note=node&&node.querySelector('input.note');if(note){note.focus();}}
  else if(lower==='o'){var modes=['outline','fill','none'];state.mode=modes[(modes.indexOf(state.mode)+1)%3];$('mode').value=state.mode;render();}
  else if(lower==='h'){document.body.classList.toggle('hide-ov');}
  else if(key==='['||key===']'){var o=$('opacity');o.value=Math.max(0,Math.min(1,parseFloat(o.value)+(key===']'?0.1:-0.1))).toFixed(1);document.body.style.setProperty('--opacity',o.value);}
  else if(key==='>'||key==='PageDown'){$('next').click();}
  else if(key==='<'||key==='PageUp'){$('prev').click();}
  else return;
  event.preventDefault();
});
window.addEventListener('storage',function(event){if(event.key===KEY){try{store=JSON.parse(event.newValue||'{}');}catch(e){}render();}});
render();
document.body.setAttribute('data-ready','yes');
})();
"""


def page_html(data: dict, figures: str = "", intro: str = "") -> str:
    engines = {panel["e"] for subject in data["subjects"] for panel in subject["views"]}
    engines = sorted(engines | {e.split("[")[0] for e in engines})  # a family (scepi) selects all its series
    options = "".join(f'<option value="{html.escape(e)}">{html.escape(e)}</option>' for e in engines)
    keys = " \u00b7 ".join(f"<kbd>{html.escape(k)}</kbd> {html.escape(v)}" for k, v in KEYS_HELP)
    flagged = sum(1 for s in data["subjects"] if s["n"])
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    title = html.escape(data["title"])
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f'<meta name="viewport" content="width=device-width"><style>{_STYLE}</style></head><body>'
        f"<header><h1>{title}</h1><p>{len(data['subjects'])} subjects, {flagged} flagged by the automatic rules; "
        f"ranked worst first. {intro}</p><p class=\"convention\">{html.escape(CONVENTION)}</p>"
        f'<p class="keys">{keys}</p></header>'
        '<div class="controls">'
        '<label>Filter <input id="filter" type="search" placeholder="sub-..."></label>'
        '<label><input id="flagged-only" type="checkbox"> flagged only</label>'
        '<label><input id="unrated-only" type="checkbox"> unrated only</label>'
        f'<label>engine <select id="engine"><option value="">all</option>{options}</select></label>'
        '<label>overlay <select id="mode"><option value="outline">outline</option><option value="fill">filled</option>'
        '<option value="none">none</option></select></label>'
        '<label>opacity <input id="opacity" type="range" min="0" max="1" step="0.1" value="0.6"></label>'
        '<label>width <select id="thumb"><option>300</option><option selected>420</option><option>640</option>'
        '<option>100000</option></select></label>'
        '<span class="pager"><button id="prev" type="button">&lt;</button> <span id="pageinfo"></span> '
        '<button id="next" type="button">&gt;</button></span>'
        '<label>per page <select id="page-size"><option>20</option><option selected>50</option><option>100</option>'
        '<option>200</option></select></label>'
        '<label>rater <input id="rater" type="text" size="8"></label>'
        '<span id="progress"></span><button id="next-unrated" type="button">next unrated (U)</button>'
        '<button id="export" type="button">export ratings (TSV)</button>'
        '<label>import <input id="import" type="file" accept=".tsv,.txt,text/tab-separated-values"></label>'
        '<span><span id="shown"></span> shown</span> <span id="message"></span></div>'
        f'<main id="subjects"></main><div id="modal"></div><div class="figures">{figures}</div>'
        f'<script id="report-data" type="application/json">{payload}</script>'
        f"<script>{_SCRIPT}</script></body></html>")


def write_review_report(path: str | os.PathLike, subjects: Sequence[dict], title: str = "SegmentationSuite QC review",
                        columns: Sequence[str] = (), figures: str = "", intro: str = "") -> int:
    """Write the page (atomically) beside its files folder; returns its size in bytes."""
    from ..image import OutputTransaction

    data = page_data(path, subjects, title, columns)
    encoded = page_html(data, figures, intro).encode("utf-8")
    with OutputTransaction(overwrite=True) as transaction:
        with open(transaction.temp_path(path), "wb") as handle:
            handle.write(encoded)
    return len(encoded)


def read_page_data(path: str | os.PathLike) -> dict:
    """The JSON a written report page holds (its subjects, views and legends)."""
    text = Path(path).read_text(encoding="utf-8")
    start = text.index('<script id="report-data" type="application/json">') + len(
        '<script id="report-data" type="application/json">')
    return json.loads(text[start:text.index("</script>", start)].replace("<\\/", "</"))
