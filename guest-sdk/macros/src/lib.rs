//! The `#[fabric::task]` attribute of the fabric guest SDK.
//!
//! `#[task] fn add(a: i64, b: i64) -> i64 { a + b }` becomes:
//! - a unit struct `add` whose methods are the task's handles:
//!   `add.remote(1, 2)` (submit, returns an `ObjectRef<i64>`),
//!   `add.remote_with(&opts, 1, 2)` and `add.local(1, 2)` (call in-process);
//! - an argument struct that decodes both JSON (an object keyed by parameter
//!   name, or an array in order) and the SDK's binary encoding;
//! - a registration in the SDK's dispatch table under the name `add`.
//!
//! A unit struct is used rather than keeping `fn add` so that the handle reads
//! as in Ray (`add.remote(..)`): a function item cannot carry methods.
#![warn(missing_docs)]

use proc_macro::TokenStream;
use quote::{format_ident, quote};
use syn::{parse_macro_input, spanned::Spanned, FnArg, ImplItem, ItemFn, ItemImpl, Pat, ReturnType, Signature, Type};

/// Makes a function a fabric task. See the crate documentation.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[fabric::task] takes no arguments; per-call options go to `remote_with`",
        )
        .to_compile_error()
        .into();
    }
    let func = parse_macro_input!(item as ItemFn);
    match expand(func) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand(func: ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &func.sig;
    if sig.asyncness.is_some() || !sig.generics.params.is_empty() {
        return Err(syn::Error::new(sig.span(), "a fabric task must be a plain, non-async, non-generic function"));
    }
    let vis = &func.vis;
    let attrs = &func.attrs;
    let name = &sig.ident;
    let name_str = name.to_string();
    let body = &func.block;

    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        return Err(syn::Error::new(r.span(), "a fabric task cannot take self (use #[fabric::actor] on an impl)"));
    }
    let (params, types) = typed_params(sig)?;
    let Output { value: output_ty, returns_result, declared: ret } = output(sig);

    let args_struct = format_ident!("__FabricArgs_{}", name);
    let dispatch_fn = format_ident!("__fabric_dispatch_{}", name);
    let into_result = unwrap_result(returns_result);

    Ok(quote! {
        #(#attrs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug)]
        #vis struct #name;

        #[allow(non_camel_case_types)]
        #[derive(::fabric::__private::serde::Serialize, ::fabric::__private::serde::Deserialize)]
        #[serde(crate = "::fabric::__private::serde", deny_unknown_fields)]
        struct #args_struct { #(#params: #types,)* }

        #[allow(dead_code)]
        impl #name {
            /// The name this task is dispatched by.
            pub const NAME: &'static str = #name_str;

            /// Runs the task here, in this instance, as a plain call.
            #[allow(clippy::too_many_arguments, unused_mut)]
            pub fn local(&self, #(mut #params: #types),*) -> #ret #body

            /// Submits the task to the fabric; returns a reference to its result at once.
            #[allow(clippy::too_many_arguments)]
            pub fn remote(&self, #(#params: #types),*) -> ::fabric::Result<::fabric::ObjectRef<#output_ty>> {
                self.remote_with(&::fabric::TaskOptions::default(), #(#params),*)
            }

            /// Submits the task with explicit options.
            #[allow(clippy::too_many_arguments)]
            pub fn remote_with(&self, options: &::fabric::TaskOptions, #(#params: #types),*) -> ::fabric::Result<::fabric::ObjectRef<#output_ty>> {
                ::fabric::__private::submit(#name_str, &#args_struct { #(#params,)* }, options)
            }
        }

        #[allow(non_snake_case)]
        fn #dispatch_fn(
            __args: &[u8],
            __encoding: ::fabric::__private::Encoding,
        ) -> ::fabric::Result<::std::vec::Vec<u8>> {
            let #args_struct { #(#params,)* } = ::fabric::__private::decode_args(#name_str, __args, __encoding)?;
            let __out = #name.local(#(#params),*);
            let __value: #output_ty = #into_result;
            ::fabric::__private::encode_result(&__value, __encoding)
        }

        ::fabric::__private::inventory::submit! {
            ::fabric::__private::TaskEntry { name: #name_str, dispatch: #dispatch_fn }
        }
    })
}

/// Makes an `impl` block an actor class. See the crate documentation.
///
/// `#[fabric::actor(custom_snapshot)]` uses the block's own
/// `fn snapshot_state(&self) -> fabric::Result<Vec<u8>>` and
/// `fn restore_state(state: &[u8]) -> fabric::Result<Self>` instead of the
/// state's serde form.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    let custom_snapshot = match attr.to_string().trim() {
        "" => false,
        "custom_snapshot" => true,
        other => {
            return syn::Error::new(
                proc_macro2::Span::call_site(),
                format!("unknown #[fabric::actor] argument `{other}` (expected `custom_snapshot` or nothing)"),
            )
            .to_compile_error()
            .into()
        }
    };
    let imp = parse_macro_input!(item as ItemImpl);
    match expand_actor(imp, custom_snapshot) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand_actor(mut imp: ItemImpl, custom_snapshot: bool) -> syn::Result<proc_macro2::TokenStream> {
    if imp.trait_.is_some() || !imp.generics.params.is_empty() {
        return Err(syn::Error::new(imp.span(), "#[fabric::actor] goes on a plain, non-generic `impl Type` block"));
    }
    let Type::Path(self_path) = &*imp.self_ty else {
        return Err(syn::Error::new(imp.self_ty.span(), "#[fabric::actor] needs a named type"));
    };
    let class = self_path
        .path
        .segments
        .last()
        .map(|s| s.ident.clone())
        .ok_or_else(|| syn::Error::new(imp.self_ty.span(), "#[fabric::actor] needs a named type"))?;
    let class_str = class.to_string();
    let handle = format_ident!("{}Handle", class);
    let self_ty = imp.self_ty.clone();

    let mut constructor = None;
    let mut methods = Vec::new();
    for item in &mut imp.items {
        let ImplItem::Fn(f) = item else { continue };
        let has_receiver = matches!(f.sig.inputs.first(), Some(FnArg::Receiver(_)));
        if !has_receiver && f.sig.ident == "new" {
            if f.sig.asyncness.is_some() || !f.sig.generics.params.is_empty() {
                return Err(syn::Error::new(f.sig.span(), "an actor's `new` must be plain, non-async, non-generic"));
            }
            f.sig.ident = format_ident!("__fabric_new");
            f.vis = syn::Visibility::Inherited;
            constructor = Some(f.sig.clone());
        } else if custom_snapshot && (f.sig.ident == "snapshot_state" || f.sig.ident == "restore_state") {
            // The author's snapshot hooks, not methods to call remotely.
        } else if has_receiver && matches!(f.vis, syn::Visibility::Public(_)) {
            if f.sig.asyncness.is_some() || !f.sig.generics.params.is_empty() {
                return Err(syn::Error::new(f.sig.span(), "actor methods must be plain, non-async, non-generic"));
            }
            if let Some(FnArg::Receiver(r)) = f.sig.inputs.first() {
                if r.reference.is_none() {
                    return Err(syn::Error::new(r.span(), "actor methods take `&self` or `&mut self`"));
                }
            }
            methods.push(f.sig.clone());
        }
    }
    let ctor = constructor.ok_or_else(|| {
        syn::Error::new(imp.self_ty.span(), "an actor needs a constructor `fn new(..) -> Self` in this impl block")
    })?;

    let (ctor_params, ctor_types) = typed_params(&ctor)?;
    let ctor_output = output(&ctor);
    let ctor_value = if ctor_output.returns_result {
        quote!(#self_ty::__fabric_new(#(#ctor_params),*).map_err(::fabric::__private::to_error)?)
    } else {
        quote!(#self_ty::__fabric_new(#(#ctor_params),*))
    };
    let ctor_args = format_ident!("__FabricArgs_{}_new", class);

    let mut arg_structs = Vec::new();
    let mut handle_methods = Vec::new();
    let mut dispatch_arms = Vec::new();
    let mut method_names = Vec::new();
    for sig in &methods {
        let name = &sig.ident;
        let name_str = name.to_string();
        let (params, types) = typed_params(sig)?;
        let Output { value, returns_result, .. } = output(sig);
        let args_struct = format_ident!("__FabricArgs_{}_{}", class, name);
        let into_result = unwrap_result(returns_result);
        let qualified = format!("{class_str}.{name_str}");
        arg_structs.push(quote! {
            #[allow(non_camel_case_types)]
            #[derive(::fabric::__private::serde::Serialize, ::fabric::__private::serde::Deserialize)]
            #[serde(crate = "::fabric::__private::serde", deny_unknown_fields)]
            struct #args_struct { #(#params: #types,)* }
        });
        handle_methods.push(quote! {
            /// Queues a call of this method; returns a reference to its result at once.
            #[allow(clippy::too_many_arguments)]
            pub fn #name(&self, #(#params: #types),*) -> ::fabric::Result<::fabric::ObjectRef<#value>> {
                ::fabric::__private::actor_call(::fabric::ActorHandle::id(self), #name_str, &#args_struct { #(#params,)* })
            }
        });
        dispatch_arms.push(quote! {
            #name_str => {
                let #args_struct { #(#params,)* } = ::fabric::__private::decode_args(#qualified, __args, __encoding)?;
                let __out = self.#name(#(#params),*);
                let __value: #value = #into_result;
                ::fabric::__private::encode_result(&__value, __encoding)
            }
        });
        method_names.push(name_str);
    }
    let known = method_names.join(", ");
    let (snapshot_body, restore_body) = if custom_snapshot {
        (quote!(::fabric::__private::declaring(|| self.snapshot_state())), quote!(#self_ty::restore_state(__state)?))
    } else {
        (
            quote!(::fabric::__private::snapshot_state(self)),
            quote!(::fabric::__private::restore_state::<#self_ty>(__state)?),
        )
    };
    let construct_fn = format_ident!("__fabric_construct_{}", class);
    let restore_fn = format_ident!("__fabric_restore_{}", class);

    Ok(quote! {
        #imp

        #[allow(non_camel_case_types)]
        #[derive(::fabric::__private::serde::Serialize, ::fabric::__private::serde::Deserialize)]
        #[serde(crate = "::fabric::__private::serde", deny_unknown_fields)]
        struct #ctor_args { #(#ctor_params: #ctor_types,)* }
        #(#arg_structs)*

        /// A handle to an actor of this class: a plain value that can be
        /// passed to tasks and other actors and stored in objects.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ::fabric::__private::serde::Serialize, ::fabric::__private::serde::Deserialize)]
        #[serde(crate = "::fabric::__private::serde")]
        pub struct #handle { id: ::fabric::ActorId }

        impl ::fabric::ActorHandle for #handle {
            const CLASS: &'static str = #class_str;
            fn from_id(id: ::fabric::ActorId) -> Self { #handle { id } }
            fn id(&self) -> ::fabric::ActorId { self.id }
        }

        #[allow(dead_code)]
        impl #handle {
            #(#handle_methods)*
        }

        #[allow(dead_code)]
        impl #self_ty {
            /// Starts building an actor of this class: set options, then
            /// `.remote()` (or `.get_or_create()` for a named one).
            #[allow(clippy::too_many_arguments, clippy::new_ret_no_self)]
            pub fn new(#(#ctor_params: #ctor_types),*) -> ::fabric::ActorBuilder<#handle> {
                ::fabric::ActorBuilder::new(&#ctor_args { #(#ctor_params,)* })
            }
        }

        impl ::fabric::__private::ActorObject for #self_ty {
            fn dispatch(
                &mut self,
                __method: &str,
                __args: &[u8],
                __encoding: ::fabric::__private::Encoding,
            ) -> ::fabric::Result<::std::vec::Vec<u8>> {
                match __method {
                    #(#dispatch_arms)*
                    other => Err(::fabric::Error::NotFound(format!(
                        "actor class `{}` has no method `{}` (it has: {})", #class_str, other, #known
                    ))),
                }
            }

            fn snapshot(&self) -> ::fabric::Result<::std::vec::Vec<u8>> {
                #snapshot_body
            }
        }

        #[allow(non_snake_case)]
        fn #construct_fn(
            __args: &[u8],
            __encoding: ::fabric::__private::Encoding,
        ) -> ::fabric::Result<::std::boxed::Box<dyn ::fabric::__private::ActorObject>> {
            let #ctor_args { #(#ctor_params,)* } = ::fabric::__private::decode_args(concat!(#class_str, ".new"), __args, __encoding)?;
            Ok(::std::boxed::Box::new(#ctor_value))
        }

        #[allow(non_snake_case)]
        fn #restore_fn(__state: &[u8]) -> ::fabric::Result<::std::boxed::Box<dyn ::fabric::__private::ActorObject>> {
            Ok(::std::boxed::Box::new(#restore_body))
        }

        ::fabric::__private::inventory::submit! {
            ::fabric::__private::ActorClass { name: #class_str, construct: #construct_fn, restore: #restore_fn }
        }
    })
}

/// A signature's parameters (receivers skipped): names and owned types.
fn typed_params(sig: &Signature) -> syn::Result<(Vec<syn::Ident>, Vec<Type>)> {
    let mut params = Vec::new();
    let mut types = Vec::new();
    for input in &sig.inputs {
        let FnArg::Typed(pat) = input else { continue };
        let Pat::Ident(ident) = &*pat.pat else {
            return Err(syn::Error::new(pat.pat.span(), "parameters must be plain names"));
        };
        if let Type::Reference(r) = &*pat.ty {
            return Err(syn::Error::new(r.span(), "parameters must be owned values (they cross a sandbox)"));
        }
        params.push(ident.ident.clone());
        types.push((*pat.ty).clone());
    }
    Ok((params, types))
}

/// What a function returns: the value type callers get (`T` of a
/// `Result<T, E>`), whether it is a `Result`, and the declared type.
struct Output {
    value: proc_macro2::TokenStream,
    returns_result: bool,
    declared: proc_macro2::TokenStream,
}

fn output(sig: &Signature) -> Output {
    match &sig.output {
        ReturnType::Default => Output { value: quote!(()), returns_result: false, declared: quote!(()) },
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => Output { value: quote!(#ok), returns_result: true, declared: quote!(#ty) },
            None => Output { value: quote!(#ty), returns_result: false, declared: quote!(#ty) },
        },
    }
}

/// Turns `__out` into the value, mapping an `Err` to a fabric error.
fn unwrap_result(returns_result: bool) -> proc_macro2::TokenStream {
    if returns_result {
        quote!(__out.map_err(::fabric::__private::to_error)?)
    } else {
        quote!(__out)
    }
}

/// `Result<T, ..>` (any path ending in `Result`) gives `Some(T)`.
fn result_ok_type(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        syn::GenericArgument::Type(ok) => Some(ok),
        _ => None,
    }
}
